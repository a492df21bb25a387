"""The fused LM head + cross-entropy against PyTorch's own ``F.cross_entropy`` on full logits."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.model import head_loss
from lmlab.model.head_loss import linear_cross_entropy

N, C, V = 48, 16, 1000


def inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(V, C, generator=g, dtype=dtype) * 2).requires_grad_()  # large logits
    return x, w, torch.randint(0, V, (N,), generator=g)


def loss_and_grads(fn, x, w, y, bf16=False):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = fn(x, w, y)
    loss.backward()
    return loss.detach(), x.grad, w.grad


def reference(x, w, y):
    return F.cross_entropy((x @ w.t()).float(), y)


@pytest.fixture(params=["kept", "blocked"])
def small_chunks(monkeypatch, request):
    """Several softmax row groups and vocabulary chunks even at these sizes, with ragged last
    ones; the gradient buffer either kept for backward whole or, ``blocked``, too large to keep:
    taken in row blocks and multiplied out in forward."""
    monkeypatch.setattr(head_loss, "ROW_BYTES", 4 * V * 5)  # 5 rows at a time: 48 = 9 x 5 + 3
    monkeypatch.setattr(head_loss, "VOCAB_CHUNK", 300)  # 1000 = 3 x 300 + 100
    if request.param == "blocked":  # at most 11 rows in fp32: 48 = 4 x 10 + 8; bf16: 3 x 16
        monkeypatch.setattr(head_loss, "KEPT_BYTES", {"cpu": 4 * V * 11})
    return request.param


def test_fp32_equals_cross_entropy_on_full_logits(small_chunks):
    ref = loss_and_grads(reference, *inputs())
    ours = loss_and_grads(linear_cross_entropy, *inputs())
    assert ref[0].item() > 5  # logits far apart: a wrong log-sum-exp would show
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_equals_autocast_cross_entropy(small_chunks):
    """Under autocast both round the logits to bf16 in the matmul and take the rest in fp32;
    the gradients then differ only by bf16 rounding (autocast rounds the weight's gradient to
    bf16, the fused backward accumulates it in fp32): within 1% relative."""
    ref = loss_and_grads(reference, *inputs(), bf16=True)
    ours = loss_and_grads(linear_cross_entropy, *inputs(), bf16=True)
    assert ours[0].dtype == torch.float32
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(ours[1:], ref[1:]):
        assert a.dtype == b.dtype == torch.float32
        assert ((a - b).norm() / b.norm()).item() < 1e-2


@pytest.mark.parametrize("bf16", [False, True])
def test_a_padded_vocabulary_gives_the_same_loss_and_gradients(small_chunks, monkeypatch, bf16):
    """The GPU's padding (1000 words to 1024 here, on the CPU): the padded columns never reach
    the softmax or the gradients, so loss and gradients equal the unpadded ones, and the weight's
    gradient keeps the weight's shape."""
    monkeypatch.setattr(head_loss, "PAD_VOCAB", {"cpu": 64})
    assert head_loss.padded_weight(torch.ones(V, C), torch.bfloat16).shape == (1024, C)
    ref = loss_and_grads(reference, *inputs(), bf16=bf16)
    ours = loss_and_grads(linear_cross_entropy, *inputs(), bf16=bf16)
    assert ours[2].shape == (V, C)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(ours[1:], ref[1:]):
        assert ((a - b).norm() / b.norm()).item() < (1e-2 if bf16 else 1e-5)


@pytest.mark.parametrize("blocked", [False, True])
def test_gradients_pass_gradcheck_in_fp64(monkeypatch, blocked):
    """At sizes gradcheck's one-element-at-a-time differences finish in a second: 13 rows in
    groups of 3 (ragged), 70 tokens in chunks of 30 (ragged); blocked: row blocks of 5 (ragged)."""
    n, c, v = 13, 4, 70
    monkeypatch.setattr(head_loss, "ROW_BYTES", 4 * v * 3)
    monkeypatch.setattr(head_loss, "VOCAB_CHUNK", 30)
    if blocked:
        monkeypatch.setattr(head_loss, "KEPT_BYTES", {"cpu": 8 * v * 5})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=g, dtype=torch.float64).requires_grad_()
    w = (torch.randn(v, c, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    assert torch.autograd.gradcheck(lambda x, w: linear_cross_entropy(x, w, y), (x, w))


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("pad", [1, 64])
def test_a_target_whose_probability_underflows_keeps_its_exact_loss(small_chunks, monkeypatch, bf16, pad):
    """Rows in three row blocks whose target is 400 nats below the best logit: its probability
    underflows in fp32; their loss, a log-sum-exp over logits taken again, must not, and the
    other rows' losses are -log of their target's probability; with the vocabulary padded too."""
    monkeypatch.setattr(head_loss, "PAD_VOCAB", {"cpu": pad})
    x, w, y = inputs()
    x, w = x.detach().clone(), w.detach().clone()
    far = [0, 7, 46]  # blocks of 5 rows: the first, the second, the last (ragged)
    x[:, 0] = 0.0
    x[far, 0] = 1.0
    w[1, 0], w[2, 0] = -200.0, 200.0
    y[far] = 1
    ref = loss_and_grads(reference, x, w, y, bf16)
    ours = loss_and_grads(linear_cross_entropy, x, w, y, bf16)
    assert ref[0].item() > 400 * len(far) / N  # the far rows dominate the mean
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(ours[1:], ref[1:]):
        assert torch.isfinite(a).all()
        assert ((a - b).norm() / b.norm()).item() < (1e-2 if bf16 else 1e-5)


def test_batched_features_and_a_scaled_loss(small_chunks):
    """(B, T, C) features and (B, T) targets, and an upstream gradient other than 1."""
    x, w, y = inputs()
    xb, yb = x.detach().view(4, 12, C).requires_grad_(), y.view(4, 12)
    (3 * linear_cross_entropy(xb, w, yb)).backward()
    xr = x.detach().clone().requires_grad_()
    (3 * reference(xr, w, y)).backward()
    torch.testing.assert_close(xb.grad.view(N, C), xr.grad, rtol=1e-5, atol=1e-6)


def test_no_fp32_logits_are_kept_for_backward():
    """What autograd saves: under autocast, no fp32 tensor of the logits' size (F.cross_entropy
    keeps its fp32 log-softmax), and the bf16 logits buffer only once."""
    x, w, y = inputs()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", torch.bfloat16):
            linear_cross_entropy(x, w, y)
            full = [(t.dtype, t.numel()) for t in saved if t.numel() >= N * V]
            saved.clear()
            reference(x, w, y)
    assert full == [(torch.bfloat16, N * V)]
    assert (torch.float32, N * V) in [(t.dtype, t.numel()) for t in saved]  # the check can fail


def test_a_buffer_past_its_limit_is_not_kept(monkeypatch):
    """Past KEPT_BYTES the (N, V) buffer is never kept, in training or without gradients: what the
    loss leaves allocated for backward is dx (N, C) and dw (V, C), and nothing without them."""
    from lmlab.hardware import cpu_bytes_kept

    x, w, y = inputs()
    kept = {}
    for limit in (1 << 28, 4 * V * 16):  # the buffer kept (192 kB); blocks of 16 rows
        monkeypatch.setitem(head_loss.KEPT_BYTES, "cpu", limit)
        _, kept[limit, True] = cpu_bytes_kept(lambda: linear_cross_entropy(x, w, y))
        with torch.no_grad():
            _, kept[limit, False] = cpu_bytes_kept(lambda: linear_cross_entropy(x, w, y))
    assert kept[1 << 28, True] >= 4 * N * V  # the buffer: the check can fail
    assert kept[4 * V * 16, True] <= 4 * (N * C + V * C) + 4096
    assert kept[4 * V * 16, False] <= 4096
