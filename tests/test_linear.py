"""The model's Linear: the same layer as nn.Linear, whichever way round the product is taken."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmlab.model.linear import FEW_ROWS, HALF_ROWS, Linear, LMHead, half_product, linear

C_IN, C_OUT = 24, 1000


@pytest.mark.parametrize("rows", [0, 1, 2, FEW_ROWS, FEW_ROWS + 1])
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_equals_torch_in_value_and_gradient(rows, bf16, bias):
    """(rows, 1, C_in) in, (rows, 1, C_out) out, as F.linear; gradients too (small-batch training
    takes the same path as decoding)."""
    g = torch.Generator().manual_seed(rows)  # 0 rows: an MoE expert no token was routed to
    x = torch.randn(rows, 1, C_IN, generator=g)
    w = torch.randn(C_OUT, C_IN, generator=g)
    b = torch.randn(C_OUT, generator=g) if bias else None
    outs = []
    for fn in (linear, F.linear):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        bs = b.clone().requires_grad_() if bias else None
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            y = fn(xs, ws, bs)
        y.float().square().sum().backward()
        outs.append((y, xs.grad, ws.grad, bs.grad if bias else None))
    (got, *got_grads), (want, *want_grads) = outs
    assert got.shape == (rows, 1, C_OUT) and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-3)


def test_linear_module_is_an_nn_linear_with_the_same_state():
    """Checkpoints, Muon's parameter split and the init see an nn.Linear; only forward differs."""
    torch.manual_seed(0)
    ours = Linear(C_IN, C_OUT)
    theirs = nn.Linear(C_IN, C_OUT)
    theirs.load_state_dict(ours.state_dict())
    assert isinstance(ours, nn.Linear) and ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(1, C_IN)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_the_head_decodes_from_an_fp16_copy_that_follows_its_weight():
    """LMHead.decoding_weight: fp16 for up to HALF_ROWS rows, remade after every in-place update of
    the weight (an optimizer step, load_state_dict), None past HALF_ROWS rows or out of fp16's
    range; half_product equals the fp32 product to the weight's fp16 rounding."""
    torch.manual_seed(0)
    head = LMHead(C_IN, C_OUT, bias=False)
    half = head.decoding_weight(1)
    assert half.dtype == torch.float16 and torch.equal(half, head.weight.detach().half())
    assert head.decoding_weight(HALF_ROWS) is half  # kept while the weight is unchanged
    assert head.decoding_weight(HALF_ROWS + 1) is None
    x = torch.randn(1, 1, C_IN)
    want = head(x)  # (1, 1, C_out), fp32
    got = half_product(x, half)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)  # 24 products of |w| < 0.2, 2^-11 each
    assert not torch.equal(got, want)  # it did read the fp16 copy
    with torch.no_grad():
        head.weight.mul_(-2.0)  # in place, as an optimizer step: the copy follows
    torch.testing.assert_close(head.decoding_weight(1).float(), -2.0 * half.float())
    head.load_state_dict({"weight": torch.full((C_OUT, C_IN), 7e4)})  # past fp16's 65,504
    assert head.decoding_weight(1) is None
