"""Mixture of experts: dispatch equals a plain loop, the aux loss matches Hugging Face's, the
presets (balancing and training end to end: test_moe_training.py)."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.model import Transformer
from lmlab.model.moe import MoE
from tests.conftest import TINY, model_cfg

MOE_TINY = ["model/ffn=moe", "model.vocab_size=256", *TINY]


# ---- 1. dispatch equals a per-token, per-expert reference loop ------------------------------
def reference_moe(moe: MoE, x: torch.Tensor, cf=...) -> torch.Tensor:
    """The MoE written the obvious way: route each token, run its chosen experts one by one,
    dropping assignments past an expert's capacity (first choices first, then token order), by
    the capacity factor ``cf`` (not given: ``moe.capacity_factor``; None: dropless)."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    N = x.shape[0]
    logits = x @ moe.router.weight.t()
    scores = logits.softmax(-1) if moe.score == "softmax" else logits.sigmoid()
    cf = moe.capacity_factor if cf is ... else cf
    cap = math.ceil(cf * N * moe.top_k / moe.n_experts) if cf else N * moe.top_k
    taken = [0] * moe.n_experts
    rows = [torch.zeros(shape[-1]) for _ in range(N)]
    choices = []
    for n in range(N):
        chosen = torch.topk(scores[n] + moe.expert_bias, moe.top_k).indices.tolist()
        w = scores[n, chosen]
        if moe.renormalize:
            w = w / w.sum()
        choices.append((chosen, w))
    for j in range(moe.top_k):  # rank-major priority
        for n in range(N):
            e, w = choices[n][0][j], choices[n][1][j]
            if taken[e] < cap:
                taken[e] += 1
                rows[n] = rows[n] + w * moe.experts[e](x[n:n + 1])[0]
    out = torch.stack(rows)
    if moe.shared is not None:
        out = out + moe.shared(x)
    return out.reshape(shape)


@pytest.mark.parametrize("expert,score,capacity,shared,bias_init", [
    ("gelu", "softmax", None, 0, False),
    ("swiglu", "softmax", None, 0, False),
    ("gelu", "softmax", 0.5, 0, False),
    ("swiglu", "sigmoid", 0.75, 1, True),
    ("gelu", "softmax", None, 2, False),
    ("gelu", "sigmoid", 1.0, 1, True),
])
def test_dispatch_matches_reference_loop(expert, score, capacity, shared, bias_init):
    torch.manual_seed(0)
    moe = MoE(16, n_experts=4, top_k=2, expert=expert, hidden_dim=24, n_shared=shared, score=score,
              renormalize=score == "sigmoid", capacity_factor=capacity)
    if bias_init:
        moe.expert_bias.copy_(torch.tensor([0.3, -0.2, 0.0, 0.1]))
    x = torch.randn(2, 12, 16)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(2, 12, 16)

    y = moe(x1)
    stats = moe.routing
    y.backward(g)
    grads = {n: p.grad.clone() for n, p in moe.named_parameters() if p.grad is not None}
    moe.zero_grad()
    y_ref = reference_moe(moe, x2)
    y_ref.backward(g)

    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)
    for n, p in moe.named_parameters():  # an idle expert gets zero gradients (for DDP), not None
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(grads[n], ref, atol=1e-5, rtol=1e-5, msg=n)
    if capacity is None:
        assert stats.dropped == 0
    elif capacity < 1:
        assert stats.dropped > 0  # the capacity limit bit, so the test covered dropping


def test_capacity_drops_are_counted():
    torch.manual_seed(0)
    moe = MoE(8, n_experts=4, top_k=1, hidden_dim=8, capacity_factor=1.0)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0  # every token with a positive sum picks expert 0
    x = torch.randn(40, 8).abs()  # all 40 want expert 0, capacity ceil(40 / 4) = 10
    moe(x)
    assert moe.tokens_per_expert.tolist() == [40, 0, 0, 0]  # what the router asked for
    assert moe.routing.dropped.item() == pytest.approx(30 / 40)


# ---- 2. the aux loss against transformers' Mixtral implementation ---------------------------
@pytest.mark.parametrize("top_k", [1, 2])
def test_aux_loss_matches_transformers(top_k):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(0)
    moe = MoE(16, n_experts=8, top_k=top_k, hidden_dim=8, aux_loss_coef=0.02)
    with torch.no_grad():
        moe.router.weight.mul_(20)  # an uneven router, so the loss is far from its minimum
    x = torch.randn(64, 16)
    moe(x)
    losses, stats = moe.aux_losses, moe.routing
    hf = load_balancing_loss_func((moe.router(x),), num_experts=8, top_k=top_k)
    # lmlab divides assignment counts by N * top_k, transformers by N: a factor top_k.
    torch.testing.assert_close(stats.aux * top_k, hf)
    torch.testing.assert_close(losses["moe_aux"], 0.02 * hf / top_k)
    assert hf / top_k > 1.05  # uniform routing would give 1


def test_aux_loss_over_layers_is_the_sum_of_per_layer_losses():
    """transformers pools every layer's tokens into one loss; lmlab sums per-layer losses."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(0)
    model = Transformer(model_cfg([*MOE_TINY, "model.ffn.aux_loss_coef=0.01"]))
    logits = []
    hooks = [m.router.register_forward_hook(lambda mod, inp, out: logits.append(out))
             for m in model.moe_layers()]
    out = model(torch.randint(0, 256, (3, 16)))
    for h in hooks:
        h.remove()
    assert len(logits) == 2
    per_layer = sum(load_balancing_loss_func((lg,), num_experts=8, top_k=2) for lg in logits) / 2
    torch.testing.assert_close(out.aux_losses["moe_aux"], 0.01 * per_layer)
    torch.testing.assert_close(model.aux_losses()["moe_aux"], 0.01 * per_layer)
    for layer, lg in zip(model.moe_layers(), logits):
        torch.testing.assert_close(layer.routing.aux,
                                   load_balancing_loss_func((lg,), num_experts=8, top_k=2) / 2)


def test_z_loss_is_mean_squared_logsumexp():
    torch.manual_seed(0)
    moe = MoE(16, n_experts=4, top_k=2, hidden_dim=8, z_loss_coef=1e-3)
    x = torch.randn(10, 16)
    moe(x)
    losses = moe.aux_losses
    expected = 1e-3 * torch.logsumexp(moe.router(x), -1).pow(2).mean()
    torch.testing.assert_close(losses["moe_z"], expected)


def test_bias_is_used_for_selection_only_and_moves_against_load():
    torch.manual_seed(0)
    moe = MoE(8, n_experts=4, top_k=1, hidden_dim=8, score="sigmoid", renormalize=False,
              bias_update_rate=0.1)
    x = torch.randn(50, 8)
    moe.expert_bias.copy_(torch.tensor([10.0, 0, 0, 0]))  # force expert 0
    logits, _, choice, weights = moe.route(x)
    assert (choice == 0).all()
    torch.testing.assert_close(weights[:, 0], logits[:, 0].sigmoid())  # bias not in the weights
    moe(x[:30])
    moe(x[30:])  # two micro-batches of one step: the layer sums their counts
    assert moe.tokens_per_expert.tolist() == [50, 0, 0, 0]
    moe.update_bias()
    torch.testing.assert_close(moe.expert_bias, torch.tensor([9.9, 0.1, 0.1, 0.1]))
    assert moe.tokens_per_expert is None  # reset for the next step
    moe(x)
    moe.update_bias(reduce=lambda counts: 2 * counts)  # as if a second rank routed alike
    torch.testing.assert_close(moe.expert_bias, torch.tensor([9.8, 0.2, 0.2, 0.2]))
    moe.eval()
    moe(x)  # evaluation passes do not count
    assert moe.tokens_per_expert is None
    fixed = MoE(8, n_experts=4, hidden_dim=8)
    fixed(x)
    fixed.update_bias()  # rate 0: no-op
    assert not fixed.expert_bias.any() and fixed.tokens_per_expert is None


def test_bad_values_name_the_choices():
    with pytest.raises(ValueError, match="ffn.expert: unknown 'relu'; valid choices: gelu, swiglu"):
        MoE(8, expert="relu")
    with pytest.raises(ValueError, match="ffn.score"):
        MoE(8, score="tanh")
    with pytest.raises(ValueError, match="ffn.top_k"):
        MoE(8, n_experts=4, top_k=5)


# ---- presets and parameter report -----------------------------------------------------------
def test_active_params_count_top_k_of_the_routed_experts():
    model = Transformer(model_cfg([*MOE_TINY, "model.ffn.n_shared=1"]))
    moe = model.blocks[0].ffn
    per_expert = sum(p.numel() for p in moe.experts[0].parameters())
    assert model.active_params() == model.num_params() - 2 * (8 - 2) * per_expert
    dense = Transformer(model_cfg(["model.vocab_size=256", *TINY]))
    assert dense.active_params() == dense.num_params()


def test_mixtral_preset():
    model = Transformer(model_cfg(["model=mixtral", "model.vocab_size=256", *TINY]))
    assert model.lm_head.weight is not model.tok_emb.weight
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    moe = model.blocks[0].ffn
    assert isinstance(moe, MoE) and moe.n_experts == 8 and moe.top_k == 2
    assert hasattr(moe.experts[0], "gate")  # SwiGLU experts
    assert type(model.norm).__name__ == "RMSNorm"
    out = model(torch.randint(0, 256, (2, 16)))
    assert out.logits.shape == (2, 16, 256) and "moe_aux" in out.aux_losses
