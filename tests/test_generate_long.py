"""Generation past the context, where the KV cache restarts on half a window."""

import torch

from lmlab.model import Transformer
from tests.conftest import TINY, model_cfg
from tests.test_generate import greedy_rows


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
