"""MoE capacity limits by mode: ``capacity_factor`` in training, ``eval_capacity_factor`` (null:
dropless) in evaluation and generation, so held-out losses and generated tokens do not depend on
the batch a sequence is computed with."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lmlab.model.moe import MoE
from lmlab.module import LanguageModule
from lmlab.sampling import sample_tokens
from tests.conftest import model_cfg
from tests.test_generate import greedy_rows, tiny_model
from tests.test_moe import MOE_TINY, reference_moe


def moe_layer(**kw) -> MoE:
    torch.manual_seed(0)
    return MoE(16, n_experts=4, top_k=2, hidden_dim=24, **kw)


def batch_dependence(moe: MoE, x: torch.Tensor) -> tuple[float, float]:
    """How far the second sequence's output in the batch ``x`` is from its output alone, and the
    fraction of the batch's assignments dropped."""
    with torch.no_grad():
        batched = moe(x)[1]
        dropped = moe.routing.dropped.item()
        alone = moe(x[1:2])[0]
    return (batched - alone).abs().max().item(), dropped


def test_each_mode_drops_by_its_own_capacity_factor():
    moe = moe_layer(capacity_factor=0.25, eval_capacity_factor=0.75)
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(moe.train()(x), reference_moe(moe, x, cf=0.25), atol=1e-5, rtol=1e-5)
        train_dropped = moe.routing.dropped.item()
        torch.testing.assert_close(moe.eval()(x), reference_moe(moe, x, cf=0.75), atol=1e-5, rtol=1e-5)
        assert 0 < moe.routing.dropped.item() < train_dropped  # the statistic is the pass's own


def test_a_token_depends_on_its_batch_only_where_a_capacity_applies():
    x = torch.randn(2, 12, 16)
    moe = moe_layer(capacity_factor=0.5)  # eval_capacity_factor null: dropless outside training
    diff, dropped = batch_dependence(moe.eval(), x)
    assert diff < 1e-6 and dropped == 0
    diff, dropped = batch_dependence(moe.train(), x)  # training still drops
    assert diff > 1e-3 and dropped > 0
    moe = moe_layer(capacity_factor=0.5, eval_capacity_factor=0.5)
    diff, dropped = batch_dependence(moe.eval(), x)  # a capacity asked for at eval applies
    assert diff > 1e-3 and dropped > 0


def loud_moe(*extra):
    """A tiny MoE model whose experts' outputs are scaled up 20x, so that a dropped assignment
    changes greedy tokens (in a random model the residual stream carries them regardless)."""
    model = tiny_model("model/ffn=moe", *extra)
    with torch.no_grad():
        for layer in model.moe_layers():
            for expert in layer.experts:
                expert.proj.weight.mul_(20)
    return model


@pytest.mark.parametrize("eval_cf, equal", [("null", True), ("1.0", False)])
def test_greedy_generation_cached_or_batched_equals_uncached_or_alone(eval_cf, equal):
    """The prompt's prefill is one pass over all its tokens, a decoding step one token a row: under
    a capacity they differ (1.0: the control, showing the check can see a drop)."""
    model = loud_moe("model.ffn.capacity_factor=0.5", f"model.ffn.eval_capacity_factor={eval_cf}")
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 97, (2, 5), generator=g)
    cached = sample_tokens(model, prompt, 10, temperature=0, use_cache=True)
    uncached = sample_tokens(model, prompt, 10, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached) == equal
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 7, 1, 5)]
    batched = greedy_rows(model, prompts, 8)
    assert (batched == [greedy_rows(model, [p], 8)[0] for p in prompts]) == equal


def val_loss(module: LanguageModule, data: torch.Tensor, batch_size: int) -> float:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
    return trainer.validate(module, loader, verbose=False)[0]["val/loss"]


def test_validation_loss_does_not_depend_on_the_eval_batch_size():
    data = torch.randint(0, 256, (8, 17), generator=torch.Generator().manual_seed(0))
    for eval_cf, equal in [("null", True), ("0.5", False)]:
        torch.manual_seed(0)
        cfg = model_cfg([*MOE_TINY, "model.ffn.capacity_factor=0.5",
                         f"model.ffn.eval_capacity_factor={eval_cf}"])
        module = LanguageModule(cfg, lr=1e-3, warmup_steps=0, max_steps=1)
        losses = [val_loss(module, data, bs) for bs in (8, 2)]
        assert (abs(losses[0] - losses[1]) < 1e-6) == equal, (eval_cf, losses)
        dropped = [layer.routing.dropped.item() for layer in module.model.moe_layers()]
        assert (max(dropped) == 0) == equal, dropped  # what validation routed, by its own limit
