"""What a resumed run follows: the schedule this run plans (module.extend's new length), in
process with Lightning's own restore order (on_load_checkpoint, configure_optimizers, then the
optimizer's and scheduler's states); and what it prints."""

import warnings

import lightning as L
from lightning.pytorch.utilities.parsing import AttributeDict
import pytest
import torch

from lmlab.console import quiet_third_party
from lmlab.module import LanguageModule
from lmlab.errors import UserError
from lmlab.schedule import Schedule, resume_anchor
from tests.conftest import TINY, model_cfg

MODEL = TINY + ["model.vocab_size=64"]


class LRs(L.Callback):
    """The learning rate each optimizer step uses, by step."""

    def __init__(self):
        self.by_step = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.by_step[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def fit(module, steps, ckpt_path=None, save=None):
    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.randint(0, 64, (64, 17)), batch_size=2)
    lrs = LRs()
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, accelerator="cpu",
                        callbacks=[lrs], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    if save:
        trainer.save_checkpoint(save)
    return lrs.by_step


def test_an_extended_resume_decays_from_its_step_to_the_new_end(tmp_path):
    """A run planned for 20 steps, stopped at 10 and resumed with max_steps=30 and extend: the LR
    goes on from its step-10 value down a cosine to the floor at step 30 (the restored scheduler
    put the checkpoint's 20-step plan back: the LR reached the floor at 20 and stayed there)."""
    hp = dict(lr=1e-3, warmup_steps=2, min_lr_ratio=0.1, optimizer={"_target_": "lmlab.optim.adamw"})
    ckpt = tmp_path / "mid.ckpt"
    fit(LanguageModule(model_cfg(MODEL), max_steps=20, **hp), 10, save=ckpt)
    lrs = fit(LanguageModule(model_cfg(MODEL), max_steps=30, extend=True, **hp), 30, ckpt_path=str(ckpt))
    start = Schedule(2, 20, 0.1)(10)
    want = Schedule(2, 30, 0.1, anchor=(10, start))
    assert sorted(lrs) == list(range(10, 30))
    assert [lrs[s] for s in range(10, 30)] == pytest.approx([1e-3 * want(s) for s in range(10, 30)])
    assert lrs[25] > 1.5 * 1e-4  # still decaying, not at the floor


def test_a_resume_from_mid_epoch_does_not_warn_of_an_unresumable_loader(tmp_path):
    """Lightning cautioned on every resume of an lmlab run that its loader was not resumable and
    results could be unreliable; lmlab's data modules restart the loader at the checkpoint's batch
    (the resumed losses equal an uninterrupted run's, test_resume.py)."""
    hp = dict(warmup_steps=2, optimizer={"_target_": "lmlab.optim.adamw"})
    ckpt = tmp_path / "mid.ckpt"
    fit(LanguageModule(model_cfg(MODEL), max_steps=20, **hp), 10, save=ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        fit(LanguageModule(model_cfg(MODEL), max_steps=20, **hp), 12, ckpt_path=str(ckpt))
    assert not [w for w in caught if "not resumable" in str(w.message)]


def test_an_extension_shorter_than_the_checkpoint_is_refused():
    """max_steps=8 with extend, from a checkpoint at step 10: it trained nothing and was recorded
    as a completed run whose checkpoint was the other run's. At the plan's last step a resume
    is allowed: it finishes a run killed (or requeued) after its last checkpoint."""
    ckpt = {"global_step": 10, "hyper_parameters": {"max_steps": 20, "warmup_steps": 2, "min_lr_ratio": 0.1}}
    hp = {"max_steps": 8, "extend": True, "warmup_steps": 2, "min_lr_ratio": 0.1}
    with pytest.raises(UserError, match=r"^trainer.max_steps=8: the checkpoint is at step 10 already, "
                                        r"so there is nothing to train; to train on, use trainer.max_steps > 10$"):
        resume_anchor(ckpt, AttributeDict(hp))
    at_end = {"global_step": 20, "hyper_parameters": ckpt["hyper_parameters"]}
    assert resume_anchor(at_end, AttributeDict({**hp, "max_steps": 20, "extend": False})) is None
