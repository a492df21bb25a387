import math
import re

import pytest
import torch

from lmlab.module import LanguageModule
from lmlab.schedule import warmup_cosine
from tests.conftest import TINY, model_cfg


def test_warmup_then_cosine_to_the_floor():
    f = lambda s: warmup_cosine(s, warmup=10, total=110, min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_weight_decay_only_on_matrices():
    module = LanguageModule(model_cfg(TINY + ["model.vocab_size=64"]), weight_decay=0.1)
    opt = module.configure_optimizers()["optimizer"]
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"])
    assert all(p.dim() < 2 for p in plain["params"]) and plain["params"]  # biases, norm weights
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == module.model.num_params()  # every parameter once, the tied head included


def test_aux_losses_are_added_to_the_objective():
    """The loss Lightning backpropagates is cross-entropy plus the model's aux losses."""
    import lightning as L

    seen = {}

    class Capture(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen["batch"] = batch

        def on_before_backward(self, trainer, module, loss):
            with torch.no_grad():
                ce, out = module._step(seen["batch"])
            seen.update(loss=loss.item(), ce=ce.item(), aux=out.aux_losses)

    torch.manual_seed(0)
    module = LanguageModule(model_cfg(TINY + ["model.vocab_size=64", "model/ffn=moe"]))
    data = torch.utils.data.DataLoader(torch.randint(0, 64, (4, 17)), batch_size=2)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, accelerator="cpu",
                        callbacks=[Capture()], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    assert set(seen["aux"]) == {"moe_aux"} and seen["aux"]["moe_aux"] > 0
    assert seen["loss"] == pytest.approx(seen["ce"] + seen["aux"]["moe_aux"].item(), rel=1e-6)
    assert seen["loss"] != pytest.approx(seen["ce"], rel=1e-6)
    assert "train/moe_aux" in trainer.callback_metrics


def test_checkpoint_loads_with_weights_only(tmp_path):
    import lightning as L

    module = LanguageModule(model_cfg(TINY + ["model.vocab_size=64", "model/position=rope"]))
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(module)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    back = LanguageModule.load_from_checkpoint(path, weights_only=True, map_location="cpu")
    x = torch.randint(0, 64, (1, 8))
    assert torch.equal(back(x).logits, module(x).logits)
    assert math.isfinite(back(x).logits.sum().item())


def progress_bar_output(rows: int, ckpt_path=None, checkpoints=None, **trainer_kwargs) -> str:
    """What StepsProgressBar draws for a run of ``max_epochs=-1`` over ``rows`` windows in
    batches of two (resumed from ``ckpt_path``; ``last.ckpt`` every two steps in ``checkpoints``)."""
    import io

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lmlab.callbacks import StepsProgressBar

    out = io.StringIO()
    callbacks = [StepsProgressBar(console_kwargs={"file": out, "force_terminal": True, "width": 120})]
    if checkpoints:
        callbacks.append(ModelCheckpoint(checkpoints, every_n_train_steps=2, save_last=True, save_top_k=0))
    torch.manual_seed(0)
    module = LanguageModule(model_cfg(TINY + ["model.vocab_size=64"]))
    data = torch.utils.data.DataLoader(torch.randint(0, 64, (rows, 17)), batch_size=2)
    trainer = L.Trainer(max_epochs=-1, logger=False, enable_checkpointing=bool(checkpoints), accelerator="cpu",
                        callbacks=callbacks, enable_model_summary=False, limit_val_batches=0, **trainer_kwargs)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    assert trainer.global_step == trainer_kwargs["max_steps"]
    return out.getvalue()


def bar_counts(out: str) -> set[tuple[str, int, int]]:
    """(epoch title, done, total) of every state the bar drew."""
    return {(title, int(done), int(total)) for title, done, total in re.findall(r"(Epoch \d+)\s+\S+ (\d+)/(\d+)", out)}


def test_a_run_bounded_by_steps_shows_its_epoch_without_a_negative_total():
    """Lightning's rich bar titles a run with max_epochs=-1 (lmlab's default) "Epoch 0/-2"."""
    titles = set(re.findall(r"Epoch \S+", progress_bar_output(4, max_steps=3)))
    assert titles == {"Epoch 0", "Epoch 1"}  # two batches an epoch; Lightning's: "Epoch 0/-2", ...


def test_the_progress_bar_counts_optimizer_steps_under_accumulation():
    """Two batches a step, three steps: the bar ends at 3/3 (Lightning's counts batches against the
    remaining steps: 6/3)."""
    counts = bar_counts(progress_bar_output(12, max_steps=3, accumulate_grad_batches=2))  # 6 batches
    assert ("Epoch 0", 3, 3) in counts and all(done <= total == 3 for _, done, total in counts)


def test_a_resumed_runs_progress_bar_counts_from_the_epochs_start(tmp_path):
    """Six steps an epoch, resumed at step 4 of 8: epoch 0 counts to 6, epoch 1 to 2 (Lightning's
    total was the steps left at the resume: 4/4, then 5/4 and 6/4)."""
    progress_bar_output(24, max_steps=4, accumulate_grad_batches=2, checkpoints=tmp_path)
    counts = bar_counts(progress_bar_output(24, max_steps=8, accumulate_grad_batches=2,
                                            ckpt_path=tmp_path / "last.ckpt"))
    assert {(title, total) for title, _, total in counts} == {("Epoch 0", 6), ("Epoch 1", 2)}
    assert all(done <= total for _, done, total in counts)  # (which frames are drawn is timing)


def test_the_gradient_norm_is_logged_before_clipping():
    import lightning as L

    seen = {}

    def norm(module):
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()])).item()

    class Capture(L.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):  # before clipping
            seen["before"] = norm(module)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):  # clipped
            seen["after"] = norm(module)

    torch.manual_seed(0)
    module = LanguageModule(model_cfg(TINY + ["model.vocab_size=64"]))
    data = torch.utils.data.DataLoader(torch.randint(0, 64, (4, 17)), batch_size=2)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, accelerator="cpu",
                        gradient_clip_val=0.01, callbacks=[Capture()], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, data)
    assert seen["before"] > 0.1  # so that clipping at 0.01 acts
    assert trainer.callback_metrics["train/grad_norm"].item() == pytest.approx(seen["before"], rel=1e-5)
    assert seen["after"] == pytest.approx(0.01, rel=1e-3)
