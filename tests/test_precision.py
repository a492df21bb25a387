"""bf16 autocast against fp32 on real text: the loss, the gradients, and a short training run.

Where bf16 matmuls are native (AVX512-BF16, AMX, GPUs), ``precision`` picks bf16-mixed, so its
numerics must stay close to fp32. The tolerances below are stated next to what they catch: each
test also runs a known bad variant (cross-entropy's log-softmax taken in bf16) and asserts that it
falls outside the tolerance, so the test can tell good from bad rather than pass everything.
"""

import pytest
import torch
import torch.nn.functional as F

from lmlab.data.corpus import shakespeare_plays
from lmlab.data.tokenizer import get_tokenizer
from lmlab.model import Transformer
from tests.conftest import model_cfg

T, B = 64, 4
SMALL = ["model.n_layers=2", "model.d_model=64", "model.n_heads=4", f"model.context_length={T}"]


@pytest.fixture(scope="module")
def text_batches():
    """Real GPT-2 tokens of Hamlet: (4, B, T + 1) windows."""
    ids = get_tokenizer("gpt2").encode_ordinary(shakespeare_plays()["hamlet"][:30000])
    return torch.tensor(ids[: 4 * B * (T + 1)]).view(4, B, T + 1)


def bf16_log_softmax_loss(model, x, y):
    """The bug class this file guards against: log-softmax over bf16 logits."""
    return -F.log_softmax(model(x).logits, dim=-1).gather(-1, y[..., None]).mean()


def loss_and_grad(model, batch, bf16: bool, loss_fn=None):
    model.zero_grad()
    x, y = batch[:, :-1], batch[:, 1:]
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = loss_fn(model, x, y) if loss_fn else model.loss(x, y)[0]
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.fixture(scope="module")
def trained(text_batches):
    """A small model after 30 fp32 steps on one batch: confident predictions, large logits, where
    bf16 rounding of the logits would show."""
    torch.manual_seed(0)
    model = Transformer(model_cfg(SMALL))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss_and_grad(model, text_batches[0], bf16=False)
        opt.step()
    return model


def test_bf16_loss_and_gradients_match_fp32(trained, text_batches):
    batch = text_batches[0]
    loss32, grad32 = loss_and_grad(trained, batch, bf16=False)
    loss16, grad16 = loss_and_grad(trained, batch, bf16=True)
    assert loss32 < 3.0  # the model did fit the batch, so the logits are large
    # measured here: |loss diff| 2e-5 to 1.0e-3 (it depends on the fitted model: rounding logits
    # near 10 to bf16 alone moves the loss by up to 1e-3), gradient relative error 0.5%
    assert abs(loss16 - loss32) < 2e-3
    assert (grad16 - grad32).norm() / grad32.norm() < 0.02
    # the bad variant is 5e-3 off: this tolerance catches it
    bad, _ = loss_and_grad(trained, batch, bf16=True, loss_fn=bf16_log_softmax_loss)
    assert abs(bad - loss32) > 2e-3


def test_a_short_bf16_run_tracks_fp32(text_batches):
    """12 steps from one init on real text in each precision; losses on a held-out batch."""
    finals = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = Transformer(model_cfg(SMALL))
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, fused=True)
        for step in range(12):
            loss_and_grad(model, text_batches[step % 3], bf16=bf16)
            opt.step()
        with torch.no_grad():
            finals[bf16] = model.loss(text_batches[3][:, :-1], text_batches[3][:, 1:])[0].item()
    # measured here: 6e-4 apart after 12 steps
    assert abs(finals[True] - finals[False]) < 3e-3, finals
