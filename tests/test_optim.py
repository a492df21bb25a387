"""The optimizer group: module/optimizer=adamw|muon."""

import lightning as L
import pytest
import torch

from lmlab.optim import Combined, hidden_matrices
from lmlab.training import build_module
from tests.conftest import TINY, compose_cfg

SMALL = TINY + ["model.vocab_size=64"]


def module_for(optimizer: str):
    torch.manual_seed(0)
    return build_module(compose_cfg(SMALL + ["model=tiny", f"module/optimizer={optimizer}"]))


def backward_once(module):
    batch = torch.randint(0, 64, (4, 17))
    ce, _ = module.model.loss(batch[:, :-1], batch[:, 1:])
    ce.backward()


def changed_by(module, step) -> set[str]:
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    step()
    return {n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])}


def test_adamw_is_the_default_and_steps_every_parameter():
    module = module_for("adamw")
    opt = module.configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True
    backward_once(module)
    assert changed_by(module, opt.step) == {n for n, _ in module.model.named_parameters()}


def test_muon_steps_exactly_the_hidden_matrices_and_adamw_the_rest():
    module = module_for("muon")
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, Combined)
    muon, adamw = opt.optimizers
    assert type(muon) is torch.optim.Muon and type(adamw) is torch.optim.AdamW
    names = {id(p): n for n, p in module.model.named_parameters()}
    hidden = {names[id(p)] for p in hidden_matrices(module.model)}
    # 2 layers x (q, k, v, attention proj, fc, ffn proj)
    assert hidden == {f"blocks.{i}.{m}.weight" for i in range(2)
                      for m in ("attn.q", "attn.k", "attn.v", "attn.proj", "ffn.fc", "ffn.proj")}
    backward_once(module)
    assert changed_by(module, muon.step) == hidden
    everything = {n for n, _ in module.model.named_parameters()}
    rest = changed_by(module, adamw.step)
    assert rest == everything - hidden
    assert {"tok_emb.weight", "position.table.weight", "norm.weight", "blocks.0.attn.q.bias"} <= rest


def test_muon_follows_the_schedule_and_survives_a_checkpoint(tmp_path):
    module = module_for("muon")
    data = torch.utils.data.DataLoader(torch.randint(0, 64, (8, 17)), batch_size=2)
    trainer = L.Trainer(max_steps=3, logger=False, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, gradient_clip_val=1.0)
    trainer.fit(module, data)
    opt = trainer.optimizers[0]
    lrs = [g["lr"] for o in opt.optimizers for g in o.param_groups]
    assert len(set(lrs)) == 1 and lrs[0] != module.hparams.lr  # the scheduler reached both
    state = opt.state_dict()
    fresh = module_for("muon").configure_optimizers()["optimizer"]
    fresh.load_state_dict(state)
    assert fresh.optimizers[0].state is fresh.state and fresh.optimizers[1].param_groups[0] is fresh.param_groups[1]
    assert fresh.state_dict()["state"].keys() == state["state"].keys()
    p = hidden_matrices(module.model)[0]
    assert "momentum_buffer" in opt.state[p]


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(Exception, match="adamw") as err:
        compose_cfg(SMALL + ["module/optimizer=sgd"])
    assert "muon" in str(err.value)


def test_fused_adamw_clips_gradients_under_bf16_autocast(tmp_path):
    """Lightning refuses to clip with an optimizer that claims to unscale fp16 gradients itself;
    lmlab's fused AdamW does not claim it, so bf16-mixed with clipping trains."""
    module = module_for("adamw")
    data = torch.utils.data.DataLoader(torch.randint(0, 64, (4, 17)), batch_size=2)
    trainer = L.Trainer(max_steps=2, logger=False, accelerator="cpu", precision="bf16-mixed",
                        gradient_clip_val=1.0, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert trainer.global_step == 2
