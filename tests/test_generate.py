import torch

from lmlab.sampling import sample_next, sample_tokens
from lmlab.model import Transformer
from tests.conftest import TINY, model_cfg


def tiny_model(*extra):
    torch.manual_seed(0)
    return Transformer(model_cfg(TINY + ["model.vocab_size=97", *extra])).eval()


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9]])
    assert sample_next(logits, temperature=0).item() == 1


def test_top_k_only_samples_the_k_best():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    picks = sample_next(logits, temperature=1.0, top_k=2, generator=g)
    assert set(picks.flatten().tolist()) == {0, 1}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    g = torch.Generator().manual_seed(0)
    picks = sample_next(probs.log().repeat(2000, 1), temperature=1.0, top_p=0.75, generator=g)
    assert set(picks.flatten().tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.75
    frac0 = (picks == 0).float().mean().item()
    assert abs(frac0 - 0.5 / 0.8) < 0.05  # renormalised over the kept tokens


def test_kv_cache_generation_equals_full_recomputation():
    for pos in ("learned", "rope", "alibi", "sinusoidal", "none"):
        model = tiny_model(f"model/position={pos}")
        prompt = torch.randint(0, 97, (2, 5))
        with_cache = sample_tokens(model, prompt, 10, temperature=0, use_cache=True)
        without = sample_tokens(model, prompt, 10, temperature=0, use_cache=False)
        assert torch.equal(with_cache, without), pos


def test_generation_past_the_context_keeps_going():
    model = tiny_model("model/position=rope")
    out = sample_tokens(model, torch.randint(0, 97, (1, 4)), 40, temperature=0, use_cache=True)
    ref = sample_tokens(model, torch.randint(0, 97, (1, 4)), 0)
    assert out.shape == (1, 44) and ref.shape == (1, 4)


# ---- batches, stop strings, streaming (real GPT-2 tokenizer) ------------------------------------
def gpt2_tiny():
    return tiny_model("model.vocab_size=50257", "model.context_length=64")


def test_a_batch_of_prompts_equals_the_prompts_one_by_one():
    from lmlab.data.tokenizer import get_tokenizer
    from lmlab.sampling import sample_text, sample_texts

    model = gpt2_tiny()
    prompts = ["ROMEO:", "HAMLET:", "To be, or not to be", "Enter"]
    lengths = [len(get_tokenizer("gpt2").encode(p)) for p in prompts]
    assert len(set(lengths)) < len(lengths)  # some prompts really share a batch
    batched = sample_texts(model, "gpt2", prompts, num_samples=2, max_new_tokens=12, temperature=0)
    single = [sample_text(model, "gpt2", p, max_new_tokens=12, temperature=0) for p in prompts]
    assert [b[0] for b in batched] == [b[1] for b in batched] == single


def test_a_stop_string_ends_generation_before_it():
    import io

    from lmlab.sampling import sample_text

    model = gpt2_tiny()
    calls = []
    model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    full = sample_text(model, "gpt2", "ROMEO:", max_new_tokens=30, temperature=0)
    new = full[len("ROMEO:"):]
    stop = new[len(new) // 3: len(new) // 3 + 3]  # a piece of what greedy decoding produces
    calls.clear()
    stream = io.StringIO()
    text = sample_text(model, "gpt2", "ROMEO:", max_new_tokens=30, temperature=0, stop=[stop],
                       stream=stream)
    assert text == "ROMEO:" + new[: new.find(stop)]
    assert len(calls) < 30  # generation ended early, not just the text cut
    assert "ROMEO:" + stream.getvalue() == text  # streamed as produced, nothing past the stop
