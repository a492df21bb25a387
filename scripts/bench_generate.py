"""Generation benchmark (`python scripts/benchmark.py generate`): tokens/s of lmlab's KV-cached
decoding against recomputing the whole context at every step (the default model), and against
transformers' GPT2LMHeadModel.generate() on a GPT-2 of the same size as lmlab's model=tiny (random
weights, greedy, use_cache=True, same batch and lengths). The contenders take turns in every round."""

from __future__ import annotations

import time

import torch

from bench_common import bench, compose, machine
from lmlab.errors import positive_int


def lmlab_model(overrides: list[str]):
    from omegaconf import OmegaConf

    from lmlab.model import Transformer

    cfg = compose(overrides)
    torch.manual_seed(0)
    return Transformer(OmegaConf.to_container(cfg.model, resolve=True)).eval()


def hf_gpt2(model):
    """transformers' GPT-2 with the sizes of ``model`` (random weights)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.cfg
    cfg = GPT2Config(n_layer=c["n_layers"], n_embd=c["d_model"], n_head=c["n_heads"],
                     n_positions=c["context_length"], vocab_size=c["vocab_size"],
                     bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).eval()


STREAM_BYTES = 1 << 28  # a 256 MB fp32 buffer summed in the rounds: the memory bandwidth now


def cmd_generate(args) -> None:
    from lmlab.sampling import sample_tokens

    B, P, N = args.batch, args.prompt_len, args.new_tokens
    print(f"generation: batch {B}, prompt {P} tokens, {N} new tokens, greedy, fp32, median of "
          f"{args.repeats} interleaved rounds\n{machine()}")

    def lmlab(model, idx, use_cache):
        def run():
            out = sample_tokens(model, idx, N, temperature=0, use_cache=use_cache)
            assert out.shape == (B, P + N)
        return run

    # 1. the default model (context 128: past it, the cache restarts on the last half window),
    #    eager and with model.compile=true (its compilation timed apart, before the rounds)
    model = lmlab_model(args.overrides)
    # and, where it reads fp16 copies of the weights (one or two rows), the same from fp32 weights
    compiled = {"compiled": lmlab_model([*args.overrides, "model.compile=true"])}
    with torch.no_grad():  # as decoding runs
        half = compiled["compiled"].half_copy(B)  # the fp16 copies a compiled step reads, or None
    if half is not None:
        compiled["compiled32"] = lmlab_model([*args.overrides, "model.compile=true"])
        compiled["compiled32"].fp16_decoding = False
    idx = torch.randint(0, model.cfg["vocab_size"], (B, P), generator=torch.Generator().manual_seed(0))
    for m in compiled.values():
        m.load_state_dict(model.state_dict())
    t0 = time.perf_counter()
    lmlab(compiled["compiled"], idx, True)()  # compiles (compiled32 compiles in the warm-up round)
    compile_s = time.perf_counter() - t0
    stream = torch.ones(STREAM_BYTES // 4)
    t = bench({"cached": lmlab(model, idx, True), **{k: lmlab(m, idx, True) for k, m in compiled.items()},
               "recompute": lmlab(model, idx, False), "stream": stream.sum}, args.repeats, warmup=1)
    print(f"default model ({' '.join(args.overrides) or 'model=tiny_llama'}, {model.num_params():,} "
          f"parameters, context {model.context_length}):")
    print(f"  lmlab, KV cache          {B * N / t['cached']:8.0f} tokens/s")
    print(f"  lmlab, KV cache compiled {B * N / t['compiled']:8.0f} tokens/s   (model.compile=true; its "
          f"first call, compiling, took {compile_s:.1f} s)")
    if "compiled32" in t:
        print(f"    the same, fp32 weights {B * N / t['compiled32']:8.0f} tokens/s   (fp16_decoding=False): the fp16 "
              f"copies {t['compiled32'] / t['compiled']:.2f}x")
    print(f"  lmlab, recompute context {B * N / t['recompute']:8.0f} tokens/s   cached / recompute = "
          f"{t['recompute'] / t['cached']:.1f}x, compiled {t['recompute'] / t['compiled']:.1f}x  (target >= 5)")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # a tied head once
    read = weights if half is None else sum(w.numel() * w.element_size()
                                            for w in [*half.blocks.parameters(), half.head])
    floor = weights * t["stream"] / STREAM_BYTES  # seconds: one read of the weights per decoding step
    print(f"  memory floor: the {weights / 1e6:.0f} MB of weights, read once a step, take {1e3 * floor:.2f} ms "
          f"at the {weights / floor / 1e9:.0f} GB/s a 256 MB sum streams in the rounds\n"
          f"    recompute / floor = {t['recompute'] / (N * floor):.1f}x: the most a KV cache reading "
          f"fp32 weights can gain on this machine")
    copies = "fp16 copies of the weights" if half is not None else "fp32 weights"
    print(f"  the compiled step reads {copies}: {read / 1e6:.0f} MB, floor {1e3 * floor * read / weights:.2f} ms "
          f"(compiled step {1e3 * t['compiled'] / N:.2f} ms)")
    step_ms = {"eager": 1e3 * t["cached"] / N, "compiled": 1e3 * t["compiled"] / N}
    sampling_draw(B, model.cfg["vocab_size"], args.repeats, step_ms)

    # 2. against transformers, with a context that holds prompt and continuation (GPT-2's
    #    position table cannot go past n_positions)
    ctx = P + N
    model = lmlab_model(["model=tiny", *args.overrides, f"model.context_length={ctx}"])  # GPT-2's
    hf = hf_gpt2(model)

    def transformers_generate():
        out = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=N,
                          min_new_tokens=N, do_sample=False, use_cache=True, pad_token_id=0)
        assert out.shape == (B, P + N)

    t = bench({"lmlab": lmlab(model, idx, True), "hf": torch.no_grad()(transformers_generate)},
              args.repeats, warmup=1)
    print(f"model=tiny (GPT-2's architecture), context {ctx} (n_positions {ctx}): lmlab {model.num_params():,} "
          f"parameters, GPT2LMHeadModel {hf.num_parameters():,}")
    print(f"  lmlab, KV cache          {B * N / t['lmlab']:8.0f} tokens/s")
    print(f"  transformers generate()  {B * N / t['hf']:8.0f} tokens/s   lmlab / transformers = "
          f"{t['hf'] / t['lmlab']:.2f}x  (target >= 1)")


def sampling_draw(B: int, vocab: int, repeats: int, step_ms: dict[str, float], draws: int = 50) -> None:
    """Sampling (temperature > 0, generate.py's default) draws one token per row from the softmax:
    lmlab's inverse-CDF draw against torch.multinomial, beside the decoding steps it follows."""
    from lmlab.sampling import draw

    probs = torch.randn(B, vocab, generator=torch.Generator().manual_seed(0)).softmax(-1)
    gen = torch.Generator().manual_seed(0)

    def many(one):
        def run():
            for _ in range(draws):
                one()
        return run

    t = bench({"draw": many(lambda: draw(probs, gen)),
               "multinomial": many(lambda: torch.multinomial(probs, 1, generator=gen))}, repeats, warmup=1)
    steps = ", ".join(f"{k} {v:.2f} ms" for k, v in step_ms.items())
    print(f"  a sampled token's draw from {B} x {vocab:,} probabilities: lmlab {1e3 * t['draw'] / draws:.3f} ms, "
          f"torch.multinomial {1e3 * t['multinomial'] / draws:.3f} ms: {t['multinomial'] / t['draw']:.1f}x "
          f"(the decoding step it follows: {steps})\n")


OPTIONS = [
    ("overrides", dict(nargs="*", help="model config overrides (default: the default model)")),
    ("--batch", dict(type=positive_int, default=1)),
    ("--prompt-len", dict(type=positive_int, default=16)),
    ("--new-tokens", dict(type=positive_int, default=256)),
    ("--repeats", dict(type=positive_int, default=3)),
]
