"""The fp16 copies of the weights that compiled decoding of one or two rows reads on CPU: made
from the model, never in its state, and kept equal to its weights as they change."""

import torch

from lmlab.kv_cache import KVCache
from lmlab.model import Transformer
from lmlab.model.half_copy import HALF_ROWS
from tests.conftest import TINY, model_cfg

SMALL = TINY + ["model.vocab_size=64"]


def linear_weights(blocks):
    return [m.weight for m in blocks.modules() if isinstance(m, torch.nn.Linear)]


@torch.no_grad()  # as decoding runs; with gradients enabled the fp32 weights are read
def copies(model, rows=1):
    return model.half_copy(rows)


def assert_copies(model, half):
    """half's linear weights and head are model's in fp16; its other parameters equal model's."""
    fp16 = {id(w) for w in linear_weights(half.blocks)}
    for src, dst in zip(model.blocks.parameters(), half.blocks.parameters()):
        assert dst.dtype == (torch.float16 if id(dst) in fp16 else torch.float32)
        assert torch.equal(dst, src.detach().to(dst.dtype))
    assert half.head.dtype == torch.float16 and torch.equal(half.head, model.lm_head.weight.detach().half())


def test_the_copies_follow_the_weights_and_stay_out_of_the_state():
    torch.manual_seed(0)
    model = Transformer(model_cfg(SMALL))
    assert copies(model) is None  # in training mode (dropout): the fp32 weights
    model.eval()
    keys, n_params = model.state_dict().keys(), len(list(model.parameters()))
    half = copies(model)
    assert_copies(model, half)
    assert model.half_copy(1) is None  # gradients enabled: they must reach the model's weights
    assert copies(model, HALF_ROWS + 1) is None  # more rows: the fp32 products are faster
    model.fp16_decoding = False  # asked for the fp32 weights
    assert copies(model) is None
    model.fp16_decoding = True
    assert model.state_dict().keys() == keys and len(list(model.parameters())) == n_params
    # a real optimizer step changes the weights in place: the same copies, updated
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    batch = torch.randint(0, 64, (2, 9))
    model.loss(batch[:, :-1], batch[:, 1:])[0].backward()
    opt.step()
    assert copies(model, HALF_ROWS) is half
    assert_copies(model, half)
    # a weight past fp16's range: decoding reads the fp32 weights until it is back in range
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict({**state, "blocks.0.attn.q.weight": torch.full_like(state["blocks.0.attn.q.weight"], 7e4)})
    assert copies(model) is None
    model.load_state_dict(state)
    assert copies(model) is half
    assert_copies(model, half)


def test_a_decoding_step_from_the_copies_is_the_fp32_step_to_their_rounding():
    torch.manual_seed(0)
    model = Transformer(model_cfg(SMALL)).eval()
    prompt, token = torch.randint(0, 64, (1, 5)), torch.randint(0, 64, (1, 1))
    logits = []
    for half in (None, copies(model)):
        cache = KVCache(len(model.blocks), model.context_length, static=True)  # a compiled step's
        with torch.no_grad():
            model(prompt, cache)
            x, pos, _ = model.embed(token, cache)
            logits.append(model.decoding_step(x, pos, cache, half))  # eagerly: the same arithmetic
    fp32, fp16 = logits
    assert fp16.shape == fp32.shape == (1, 1, 64)
    torch.testing.assert_close(fp16, fp32, rtol=0, atol=5e-3)
    assert not torch.equal(fp16, fp32)  # it did read the fp16 copies


def test_copies_made_in_inference_mode_follow_an_update_outside_it():
    """Decoding under torch.inference_mode, training after it: the copies are normal tensors."""
    torch.manual_seed(0)
    model = Transformer(model_cfg(SMALL)).eval()
    with torch.inference_mode():
        half = model.half_copy(1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    assert copies(model) is half
    assert_copies(model, half)
