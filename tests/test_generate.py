import copy
import functools

import pytest
import torch

from lmlab.data.tokenizer import get_tokenizer
from lmlab.kv_cache import KVCache
from lmlab.sampling import cache_len, left_pad, sample_next, sample_texts, sample_tokens, stream_tokens
from lmlab.model import Transformer
from tests.conftest import TINY, model_cfg, run_entry_point


@functools.lru_cache(maxsize=None)
def composed(extra: tuple[str, ...]) -> dict:
    return model_cfg(TINY + ["model.vocab_size=97", *extra])


def tiny_model(*extra):
    torch.manual_seed(0)
    return Transformer(copy.deepcopy(composed(extra))).eval()


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9]])
    assert sample_next(logits, temperature=0).item() == 1


def test_a_tiny_temperature_samples_the_best_token():
    """Logits over a tiny temperature overflowed to inf, and softmax made nan of them: generate.py
    temperature=1e-40 ended in multinomial's traceback instead of the greedy tokens."""
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9], [5.0, 5.0, -50.0, 4.0]])
    g = torch.Generator().manual_seed(0)
    for t in (1e-6, 1e-40, 1e-300):
        picks = sample_next(logits.repeat(50, 1), temperature=t, top_p=0.9, generator=g)[:, 0]
        assert set(picks[0::2].tolist()) == {1} and set(picks[1::2].tolist()) == {0, 1}, t


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


def greedy_rows(model, prompts, n, **kw):
    """The new tokens of each prompt, generated greedily in one batch."""
    out = [[] for _ in prompts]
    for step in stream_tokens(model, prompts, n, temperature=0, **kw):
        for row, t in enumerate(step):
            if t is not None:
                out[row].append(t)
    return out


def test_a_batch_of_prompts_of_different_lengths_equals_the_prompts_one_by_one():
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 7, 1, 5)]
    variants = [["model/position=learned"], ["model/position=rope", "model/attention=gqa"],
                ["model/position=alibi", "model.attention.window=4"], ["model/position=sinusoidal"]]
    for extra in variants:
        model = tiny_model(*extra)
        for use_cache in (True, False):
            batched = greedy_rows(model, prompts, 8, use_cache=use_cache)
            alone = [greedy_rows(model, [p], 8, use_cache=use_cache)[0] for p in prompts]
            assert batched == alone, (extra, use_cache)
            assert all(len(r) == 8 for r in batched)
        # the logits too (greedy tokens of a random model barely notice a visible padding key)
        idx, pad = left_pad(prompts, "cpu")
        cache = KVCache.for_model(model)
        with torch.no_grad():
            batch = [model(idx, None, pad).logits[:, -1], model(idx, cache, pad).logits[:, -1],
                     model(idx[:, -1:], cache).logits[:, -1]]  # uncached, cached prompt, one step
            for row, p in enumerate(prompts):
                alone = KVCache.for_model(model)
                want = [model(torch.tensor([p])).logits[0, -1], model(torch.tensor([p]), alone).logits[0, -1],
                        model(torch.tensor([p[-1:]]), alone).logits[0, -1]]
                for got, ref in zip(batch, want):
                    torch.testing.assert_close(got[row], ref, atol=1e-5, rtol=1e-5)


def test_each_sequence_ends_on_its_own():
    model = tiny_model()
    prompts = [[1, 2, 3], [4, 5]]
    full = greedy_rows(model, prompts, 6)
    eos = full[0][2]  # the first row's third token ends it; the second row runs on, unless it meets it too
    ended = greedy_rows(model, prompts, 6, eos_id=eos)
    assert ended[0] == full[0][: full[0].index(eos) + 1]
    assert ended[1] == (full[1][: full[1].index(eos) + 1] if eos in full[1] else full[1])
    stopped = greedy_rows(model, prompts, 6, is_done=lambda row, new: row == 1 and len(new) == 2)
    assert stopped == [full[0], full[1][:2]]


def test_stop_string_ends_generation_and_is_cut_from_the_text():
    model = tiny_model("model.vocab_size=50257")
    enc = get_tokenizer("gpt2")
    prompt = "ROMEO:"
    free = sample_texts(model, "gpt2", [prompt], temperature=0, max_new_tokens=12, stop_at_eos=False)[0]
    new_ids = enc.encode(free[len(prompt):])
    stop = enc.decode(new_ids[3:5])  # text the model produces, from its fourth token on
    gen = free[len(prompt):]
    steps = []
    text = sample_texts(model, "gpt2", [prompt], temperature=0, max_new_tokens=12, stop=[stop],
                        stop_at_eos=False, on_text=lambda row, piece: steps.append(piece))[0]
    assert text == prompt + gen[: gen.find(stop)] and stop not in text[len(prompt):]
    assert "".join(steps) == text[len(prompt):]  # the streamed pieces are the text, stop excluded
    streams = []
    for step in stream_tokens(model, [enc.encode(prompt)], 12, temperature=0,
                              is_done=lambda row, new: stop in enc.decode(new)):
        streams.append(step[0])
    assert len(streams) < 12  # generation ended early


def test_streaming_yields_the_tokens_of_the_batched_call():
    model = tiny_model("model/position=rope")
    prompts = torch.randint(0, 97, (3, 4), generator=torch.Generator().manual_seed(2))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    whole = sample_tokens(model, prompts, 30, temperature=1.0, top_k=20, generator=g1)
    streamed = list(stream_tokens(model, prompts.tolist(), 30, temperature=1.0, top_k=20, generator=g2))
    assert torch.equal(whole[:, 4:], torch.tensor(streamed).T) and whole.shape == (3, 34)


def test_kv_cache_buffers_are_allocated_once():
    model = tiny_model("model/position=rope")
    cache = KVCache.for_model(model)
    idx = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        model(idx[:, :5], cache)
        ptrs = [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers]
        assert cache.layers[0].k.shape == (2, 4, 16, 8)  # (B, n_kv_heads, context, head_dim)
        for t in range(5, 16):
            model(idx[:, t : t + 1], cache)
        assert len(cache) == 16 and [(la.k.data_ptr(), la.v.data_ptr()) for la in cache.layers] == ptrs
        cache.reset()  # a restart reuses the buffers
        model(idx[:, 16:24], cache)
        assert [(la.k.data_ptr(), la.v.data_ptr()) for la in cache.layers] == ptrs
        with pytest.raises(ValueError, match="KV cache full"):
            model(idx[:, :9], cache)


def recorded_caches(monkeypatch) -> list[KVCache]:
    """The caches KVCache.for_model makes from now on (it still makes them as before)."""
    made, for_model = [], KVCache.for_model
    monkeypatch.setattr(KVCache, "for_model",
                        staticmethod(lambda model, max_len=None: made.append(for_model(model, max_len)) or made[-1]))
    return made


def test_the_cache_holds_the_prompt_and_new_tokens_not_the_context(monkeypatch):
    """A model with a context of 4,096 and a 7-token prompt beside a 3-token one, 5 new tokens:
    the cache's buffers hold 12 slots (it was 4,096: ~16 GB a row for Llama-3-8B's 131,072), and
    the tokens are those of recomputation."""
    model = tiny_model("model/position=rope", "model.context_length=4096")
    made = recorded_caches(monkeypatch)
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7]]
    cached = greedy_rows(model, prompts, 5)
    (cache,) = made
    assert cache.max_len == 12 and cache.layers[0].k.shape == (2, 4, 12, 8) and not cache.static
    assert cache.pos.shape == (2, 12) and len(cache) == 7 + 4  # the last token is not fed back
    assert cached == greedy_rows(model, prompts, 5, use_cache=False)


def test_cache_len():
    assert cache_len(4096, 7, 5) == 12 and cache_len(16, 5, 11) == 16 and cache_len(16, 5, 12) == 16
    assert cache_len(16, 16, 40) == 16 and cache_len(16, 0, 0) == 1
    # a static cache (compiled decoding) rounds up, so other prompt lengths reuse its compiled step
    assert cache_len(131072, 12, 20, static=True) == 1024 and cache_len(128, 5, 20, static=True) == 128
    assert cache_len(131072, 1000, 100, static=True) == 2048 == cache_len(4096, 2048, 0, static=True)


def test_a_static_cache_gives_the_logits_of_the_growing_one():
    """The static cache (compiled decoding's: whole buffers, empty slots masked) against the
    growing views, step by step: padded prompts, single-token steps, and a restart after reset."""
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 6)]
    variants = [["model/position=learned"], ["model/position=rope", "model/attention=gqa"],
                ["model/position=alibi", "model.attention.window=4"], ["model/position=sinusoidal"]]
    for extra in variants:
        model = tiny_model(*extra)
        growing, static = KVCache.for_model(model), KVCache(len(model.blocks), 16, static=True)
        assert not growing.static
        idx, pad = left_pad(prompts, "cpu")
        steps = [(idx, pad)] + [(torch.randint(0, 97, (2, 1), generator=g), None) for _ in range(5)]
        steps += [("reset", None), (torch.randint(0, 97, (2, 4), generator=g), None)]
        steps += [(torch.randint(0, 97, (2, 1), generator=g), None) for _ in range(3)]
        with torch.no_grad():
            for ids, p in steps:
                if isinstance(ids, str):
                    growing.reset(), static.reset()
                    continue
                want = model(ids, growing, p).logits
                torch.testing.assert_close(model(ids, static, p).logits, want, atol=1e-5, rtol=1e-5,
                                           msg=lambda m: f"{extra}: {m}")
        assert static.layers[0].k.shape[2] == 16 and len(static) == len(growing) == 7


def test_a_static_caches_empty_slots_are_finite():
    """Attention reads a static cache's empty slots under a -inf mask, and 0 * nan is nan: the
    buffers must start finite, whatever memory the allocator hands back (here: freed nan)."""
    for _ in range(50):
        poison = [torch.full((1, 1, 4, 2), float("nan")) for _ in range(2)]
        del poison  # freed: the allocator may hand this memory to the cache's buffers
        cache = KVCache(1, 4, static=True)
        cache.claim(1, torch.tensor([0]), None)
        cache.layers[0].write(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
        assert torch.isfinite(cache.layers[0].k).all() and torch.isfinite(cache.layers[0].v).all()


def test_generate_py_samples_a_checkpoint_without_loading_lightning(tmp_path):
    """generate.py builds the Transformer from the checkpoint alone (no LightningModule, so no
    Lightning import: ~2 s of start-up instead of ~6 on a 2-core machine) and its greedy text is
    the saved model's own. ``prompt=ROMEO:\\n`` typed on a command line means a newline, as in
    the YAML default (Hydra passes it through as a backslash and an n)."""
    from lmlab.module import LanguageModule

    torch.manual_seed(0)
    module = LanguageModule(model=model_cfg(TINY))
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    argv = [f"ckpt_path={path}", "prompt=ROMEO:\\n", "max_new_tokens=12", "temperature=0",
            f"hydra.run.dir={tmp_path / 'out'}"]
    proc = run_entry_point("generate", argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "False", proc.stdout
    want = sample_texts(module.model.eval(), "gpt2", ["ROMEO:\n"], max_new_tokens=12, temperature=0)[0]
    assert (tmp_path / "out" / "samples.txt").read_text() == want
