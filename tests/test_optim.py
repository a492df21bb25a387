"""The optimizer group: module/optimizer=adamw|muon."""

import lightning as L
import pytest
import torch

from torch.optim import _muon

from lmlab.muon import Muon, orthogonalize
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


def test_muon_is_the_default_and_adamw_steps_every_parameter():
    assert compose_cfg([]).module.optimizer._target_ == "lmlab.optim.muon"
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
    assert isinstance(muon, torch.optim.Muon) and type(adamw) is torch.optim.AdamW
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


@pytest.mark.parametrize("overrides, message", [
    (["module.optimizer.momentum=2"], "module.optimizer.momentum=2: must be in [0, 1)"),
    (["module.optimizer.ns_steps=0"], "module.optimizer.ns_steps=0: must be an integer >= 1"),
    (["module.optimizer.adjust_lr_fn=foo"], "module.optimizer.adjust_lr_fn: unknown 'foo'; valid "
                                            "choices: match_rms_adamw, original"),
    (["module/optimizer=adamw", "module.optimizer.fused=maybe"], "module.optimizer.fused='maybe': must "
                                                                 "be true, false or null"),
    (["module.betas=[0.9]"], "module.betas=[0.9]: must be two numbers in [0, 1), e.g. [0.9, 0.95]"),
    (["module.min_lr_ratio=2"], "module.min_lr_ratio=2: must be in [0, 1]"),
])
def test_bad_optimizer_values_are_named_when_the_optimizer_is_built(overrides, message):
    """validate.check_config builds the optimizer before training; these were accepted (momentum
    2, no Newton-Schulz step, a LR rising to twice its peak) or failed with an unnamed error."""
    module = build_module(compose_cfg(SMALL + ["model=tiny", *overrides]))
    with pytest.raises(ValueError) as err:
        module.configure_optimizers()
    assert str(err.value).startswith(message)


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


COEFFICIENTS = (3.4445, -4.775, 2.0315)  # torch.optim.Muon's defaults


@pytest.mark.parametrize("shape", [(96, 40), (40, 96)])
def test_fp32_newton_schulz_is_pytorchs_iteration_without_bf16_rounding(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    pytorch_bf16 = _muon._zeropower_via_newtonschulz(g, COEFFICIENTS, 5, 1e-7).float()
    ours, = orthogonalize([g], COEFFICIENTS, 5, 1e-7, dtype=torch.float32)
    assert ours.dtype == torch.float32 and ours.shape == g.shape
    # bf16 keeps 8 bits of mantissa: the two differ by ~1% (measured 1.2%), not by a different map
    assert (ours - pytorch_bf16).norm() / pytorch_bf16.norm() < 0.03
    s = torch.linalg.svdvals(ours)
    assert 0.5 < s.min() and s.max() < 1.5  # orthogonalized: every singular value near 1


SHAPES = [(48, 32), (32, 48), (48, 32), (16, 16), (32, 48), (16, 16), (8, 24)]  # tall, wide, square


def muon_steps(opt_cls, steps=3, **kw) -> list[torch.Tensor]:
    """Parameters of SHAPES after ``steps`` steps of ``opt_cls`` on fixed gradients."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in SHAPES]
    grads = [torch.randn(*s, generator=gen) for s in SHAPES]
    opt = opt_cls(params, lr=0.02, adjust_lr_fn="match_rms_adamw", **kw)
    for _ in range(steps):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def test_batched_muon_steps_as_pytorchs_muon():
    """Ours stacks same-shape matrices (tall ones transposed) into one batched iteration; the
    result must be PyTorch's, matrix by matrix, after several steps of momentum and decay."""
    start = muon_steps(torch.optim.Muon, steps=0)
    pytorch, ours = muon_steps(torch.optim.Muon), muon_steps(Muon)
    for w0, theirs, mine in zip(start, pytorch, ours):
        # bf16 iteration on both sides; measured bit-for-bit equal, allowed one bf16 rounding
        assert (mine - theirs).norm() / (theirs - w0).norm() < 1e-2
        assert (mine - theirs).abs().max() < 1e-3 * (theirs - w0).abs().max() + 1e-6
    fp32 = muon_steps(Muon, ns_dtype=torch.float32)
    for w0, theirs, mine in zip(start, pytorch, fp32):
        assert (mine - theirs).norm() / (theirs - w0).norm() < 0.03  # bf16 rounding only


def test_orthogonalize_keeps_order_and_shape_across_batches():
    gen = torch.Generator().manual_seed(1)
    matrices = [torch.randn(*s, generator=gen) for s in SHAPES]
    batched = orthogonalize(matrices, COEFFICIENTS, 5, 1e-7)
    for g, result in zip(matrices, batched):
        alone = _muon._zeropower_via_newtonschulz(g, COEFFICIENTS, 5, 1e-7)
        assert result.shape == g.shape and torch.allclose(result.float(), alone.float(), atol=1e-2)


def test_newton_schulz_precision_is_a_config_choice():
    def muon_of(*overrides):
        torch.manual_seed(0)
        module = build_module(compose_cfg(SMALL + ["module/optimizer=muon", *overrides]))
        return module.configure_optimizers()["optimizer"].optimizers[0]

    assert muon_of("module.optimizer.ns_dtype=float32").ns_dtype == torch.float32
    assert muon_of("module.optimizer.ns_dtype=bfloat16").ns_dtype == torch.bfloat16
    from lmlab.hardware import cpu_has_native_bf16
    assert muon_of().ns_dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    with pytest.raises(ValueError, match="module.optimizer.ns_dtype: unknown 'half'; valid choices: "
                                         "auto, bfloat16, float32"):
        muon_of("module.optimizer.ns_dtype=half")  # and from train.py: tests/test_errors_config.py
