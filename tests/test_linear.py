"""The model's Linear: the same layer as nn.Linear, whichever way round the product is taken."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmlab.model.linear import FEW_ROWS, Linear, linear

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



def test_an_fp16_weight_meeting_fp32_input_is_multiplied_in_fp32():
    """What compiled decoding's fp16 copies compute: x @ W.T with W rounded to fp16 and everything
    else fp32, within the weight's rounding of the fp32 product."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 1, C_IN, generator=g), torch.randn(C_OUT, C_IN, generator=g), torch.randn(C_OUT, generator=g)
    got = linear(x, w.half(), b)
    assert got.shape == (2, 1, C_OUT) and got.dtype == torch.float32
    torch.testing.assert_close(got, x @ w.half().float().t() + b, rtol=1e-5, atol=1e-5)
    # |w| < 5 rounded to 2^-11: 24 products of |x| ~ 1 move a sum by < 0.03
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=0, atol=3e-2)
    assert not torch.equal(got, F.linear(x, w, b))
