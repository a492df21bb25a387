"""Generation past the context, where the KV cache restarts on half a window."""

import torch

from lmlab.model import Transformer
from tests.conftest import TINY, model_cfg
from tests.test_generate import greedy_rows, recorded_caches


def sharp_model(*extra):
    """A tiny random model whose weights are scaled up, so that its greedy tokens depend on what
    it attends to (a plain random model's barely do)."""
    torch.manual_seed(0)
    model = Transformer(model_cfg(TINY + ["model.vocab_size=97", *extra])).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(8)
    return model


def test_a_batch_past_the_context_equals_the_prompts_one_by_one():
    """Each row's cache restarts when its own window is full, as it would alone: a short prompt
    beside a long one is not restarted early because the batch's left-padding filled its slots."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 12, 1, 20)]
    for extra in (["model/position=rope"], ["model/position=learned"], ["model/position=alibi"]):
        model = sharp_model(*extra)
        batched = greedy_rows(model, prompts, 40)
        alone = [greedy_rows(model, [p], 40)[0] for p in prompts]
        assert batched == alone, extra


def test_a_batch_past_the_context_whose_longest_row_ended():
    """A row that ended (eos) stays in the batch; the others run on past the context."""
    model = sharp_model("model/position=rope")
    prompts = [[5] * 15, [7, 8]]
    full = greedy_rows(model, prompts, 40)
    eos = full[0][0]
    ended = greedy_rows(model, prompts, 40, eos_id=eos)
    assert ended[0] == [eos]
    assert ended[1] == (full[1][: full[1].index(eos) + 1] if eos in full[1] else full[1])


def test_a_cache_sized_to_the_generation_reaches_the_context_or_restarts(monkeypatch):
    """The cache holds the longest prompt and the new tokens, at most the context (16): up to the
    context's end the tokens are recomputation's, without a restart; past it the cache has the
    context's slots and each row restarts, as it would alone."""
    model = sharp_model("model/position=rope")
    made = recorded_caches(monkeypatch)
    prompts = [[3, 1, 4], [1, 5, 9, 2, 6]]
    for n, slots in ((8, 13), (11, 16), (12, 16)):  # 5 + 12 - 1: the last step's window is 16
        assert greedy_rows(model, prompts, n) == greedy_rows(model, prompts, n, use_cache=False), n
        assert made.pop().max_len == slots
    batched = greedy_rows(model, prompts, 30)
    assert [c.max_len for c in made] == [16] and made[0].layers[0].k.shape[2] == 16
    assert batched == [greedy_rows(model, [p], 30)[0] for p in prompts]
