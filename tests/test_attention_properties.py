"""Properties every attention x position combination must have: causality, relative RoPE scores,
kernel agreement, GQA semantics, KV-cache decoding, sliding windows, QK-norm, ALiBi slopes."""

import copy
import functools
import math

import pytest
import torch
import yaml

from lmlab.kv_cache import KVCache
from lmlab.model import Transformer
from lmlab.model.attention import MATH_MAX_KEYS, Attention
from lmlab.model.position import NoPosition, RoPE, alibi_slopes
from tests.conftest import TINY, model_cfg
from tests.test_variants import options

SMALL = TINY + ["model.vocab_size=256"]
POSITIONS = options("position")
ATTENTIONS = options("attention")


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> dict:
    return model_cfg(SMALL + list(overrides))


def build(overrides, seed=0):
    """The model of ``overrides``; plain ``model.attention.<key>=<value>`` settings are applied to
    the composed dict directly, so that each group choice is composed once (compose is slow)."""
    groups = tuple(o for o in overrides if not o.startswith("model.attention."))
    cfg = copy.deepcopy(_composed(groups))
    for o in overrides:
        if o.startswith("model.attention."):
            key, value = o.removeprefix("model.attention.").split("=")
            cfg["attention"][key] = yaml.safe_load(value)
    torch.manual_seed(seed)
    return Transformer(cfg).eval()


def tokens(t=16, seed=0):
    return torch.randint(0, 256, (2, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model, idx, caches=None):
    return model(idx, caches).logits


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("position", POSITIONS)
def test_changing_token_t_changes_no_output_before_t(position, attention, window):
    model = build([f"model/position={position}", f"model/attention={attention}",
                   f"model.attention.window={window or 'null'}"])
    idx = tokens()
    t = 9
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 256
    a, b = logits(model, idx), logits(model, changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=0, rtol=0)
    assert not torch.allclose(a[:, t], b[:, t])


@pytest.mark.parametrize("scaling", [None, "linear", "ntk", "yarn"])
def test_rope_scores_depend_only_on_the_offset(scaling):
    rope = RoPE(head_dim=16, scaling=scaling, factor=4.0, original_context=64)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def score(m, n):
        qr, kr = rope.rotate(q, k, torch.tensor([m]), torch.tensor([n]))
        return (qr * kr).sum()

    for offset in (0, 1, 5, 11):
        ref = score(offset, 0)
        for start in (3, 40, 1000):
            torch.testing.assert_close(score(start + offset, start), ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(5, 0), score(6, 0))  # and the offset does matter


def test_yarn_keeps_high_frequencies_and_interpolates_low_ones():
    plain = RoPE(head_dim=64)
    yarn = RoPE(head_dim=64, scaling="yarn", factor=4.0, original_context=1024)
    assert yarn.inv_freq[0] == plain.inv_freq[0]  # 163 turns over 1024 positions: kept
    torch.testing.assert_close(yarn.inv_freq[-1], plain.inv_freq[-1] / 4)  # < 1 turn: interpolated
    assert yarn.mscale == pytest.approx(0.1 * math.log(4) + 1)


@pytest.mark.parametrize("extra", [[], ["model.attention.window=4"], ["model/attention=gqa"],
                                   ["model/attention=mqa", "model.attention.qk_norm=true"]])
@pytest.mark.parametrize("position", POSITIONS)
def test_sdpa_kernel_equals_manual(position, extra):
    sdpa = build([f"model/position={position}", "model.attention.kernel=sdpa"] + extra)
    manual = build([f"model/position={position}", "model.attention.kernel=manual"] + extra)
    manual.load_state_dict(sdpa.state_dict())
    idx = tokens()
    torch.testing.assert_close(logits(manual, idx), logits(sdpa, idx), atol=1e-5, rtol=1e-5)


def test_gqa_with_as_many_kv_heads_as_heads_is_mha():
    mha = build(["model/attention=mha"])
    gqa = build(["model/attention=gqa", "model.attention.n_kv_heads=4"], seed=1)
    gqa.load_state_dict(mha.state_dict())
    idx = tokens()
    torch.testing.assert_close(logits(gqa, idx), logits(mha, idx), atol=0, rtol=0)


@pytest.mark.parametrize("kernel", ["sdpa", "manual"])
def test_gqa_shares_each_kv_head_with_consecutive_query_heads(kernel):
    """GQA with 2 kv heads for 4 query heads = MHA whose k/v heads are (kv0, kv0, kv1, kv1)."""
    gqa = build(["model/attention=gqa", "model.attention.n_kv_heads=2", f"model.attention.kernel={kernel}"])
    mha = build(["model/attention=mha"])
    state = gqa.state_dict()
    hs = 32 // 4
    for key in list(state):
        if key.endswith(("attn.k.weight", "attn.v.weight", "attn.k.bias", "attn.v.bias")):
            heads = state[key].unflatten(0, (2, hs))
            state[key] = heads.repeat_interleave(2, dim=0).flatten(0, 1)
    mha.load_state_dict(state)
    idx = tokens()
    torch.testing.assert_close(logits(gqa, idx), logits(mha, idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["sdpa", "manual"])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("position", POSITIONS)
def test_kv_cache_decoding_equals_full_recomputation(position, window, kernel):
    model = build([f"model/position={position}", "model/attention=gqa", f"model.attention.kernel={kernel}",
                   f"model.attention.window={window or 'null'}"])
    idx = tokens(14)
    full = logits(model, idx)
    caches = KVCache.for_model(model, 32)
    steps = [logits(model, idx[:, :5], caches)]  # the prompt
    steps.append(logits(model, idx[:, 5:8], caches))  # a chunk of three
    steps += [logits(model, idx[:, t : t + 1], caches) for t in range(8, 14)]  # one at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert caches.layers[0].keys.shape == (2, 2, 14, 8)


@pytest.mark.parametrize("kernel", ["sdpa", "manual"])
def test_sliding_window_hides_keys_window_or_more_positions_back(kernel):
    """One layer, no positions: the output at t depends on tokens t-window+1 .. t only."""
    w = 4
    model = build(["model.n_layers=1", "model/position=none", f"model.attention.window={w}",
                   f"model.attention.kernel={kernel}"])
    idx = tokens()
    a = logits(model, idx)
    for s in (0, 5):
        changed = idx.clone()
        changed[:, s] = (changed[:, s] + 1) % 256
        b = logits(model, changed)
        unchanged = [t for t in range(16) if t < s or t >= s + w]
        torch.testing.assert_close(a[:, unchanged], b[:, unchanged], atol=1e-6, rtol=0)
        assert not torch.allclose(a[:, s + w - 1], b[:, s + w - 1])  # the oldest key still seen
    attn = model.blocks[0].attn
    _, weights = attn(torch.randn(1, 10, 32), model.position, torch.arange(10), need_weights=True)
    back = torch.arange(10)[:, None] - torch.arange(10)[None, :]
    assert (weights[0][:, (back < 0) | (back >= w)] == 0).all()
    assert (weights[0][:, (back >= 0) & (back < w)] > 0).all()


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    idx = tokens()
    for qk_norm, same in ((True, True), (False, False)):
        model = build(["model=llama", f"model.attention.qk_norm={str(qk_norm).lower()}"])
        a = logits(model, idx)
        with torch.no_grad():
            for blk in model.blocks:
                blk.attn.q.weight.mul_(7.0)
                blk.attn.k.weight.mul_(3.0)
        assert torch.allclose(logits(model, idx), a, atol=1e-4) is same


def test_alibi_slopes_match_the_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    # 6 heads: the 4-head slopes, then every other slope of the 8-head sequence
    want = [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(want))
    torch.testing.assert_close(alibi_slopes(16)[:2], torch.tensor([2 ** -0.5, 2 ** -1.0]))


def test_kv_cache_with_qk_norm_mqa_and_yarn_equals_full_recomputation():
    model = build(["model=llama", "model/attention=mqa", "model.position.scaling=yarn",
                   "model.position.factor=4", "model.attention.qk_norm=true", "model.attention.window=5"])
    idx = tokens(12)
    caches = KVCache.for_model(model, 32)
    steps = [logits(model, idx[:, :4], caches)] + [logits(model, idx[:, t : t + 1], caches) for t in range(4, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), logits(model, idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bf16, keys, fused", [(True, 16, False), (True, MATH_MAX_KEYS + 1, True),
                                               (False, 16, True)])
def test_auto_kernel_is_the_math_path_on_cpu_in_bf16_up_to_its_key_limit(bf16, keys, fused, monkeypatch):
    """kernel=auto (the default) runs exactly what the kernel it picks runs, and calls sdpa only
    outside bf16 on CPU or past MATH_MAX_KEYS keys."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    torch.manual_seed(0)
    auto = Attention(32, 2)
    picked = Attention(32, 2, kernel="sdpa" if fused else "manual")
    picked.load_state_dict(auto.state_dict())
    x = torch.randn(1, keys, 32)
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        got = auto(x, NoPosition(), torch.arange(keys))
        assert bool(calls) == fused
        torch.testing.assert_close(got, picked(x, NoPosition(), torch.arange(keys)), atol=0, rtol=0)
