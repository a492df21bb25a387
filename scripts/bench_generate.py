"""`benchmark.py generate`: lmlab's KV-cache decoding against recomputing the context every
step, and against Hugging Face transformers' GPT-2 generate() at the same size (random weights)."""

from __future__ import annotations

import torch

from bench_common import bench, machine
from bench_train import compose
from lmlab.sampling import sample_tokens


def hf_gpt2_like(model_cfg: dict):
    """A randomly initialised transformers GPT-2 with lmlab's sizes."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=model_cfg["vocab_size"], n_positions=model_cfg["context_length"],
                     n_embd=model_cfg["d_model"], n_layer=model_cfg["n_layers"],
                     n_head=model_cfg["n_heads"])
    return GPT2LMHeadModel(cfg).eval()


def cmd_generate(args) -> None:
    from omegaconf import OmegaConf

    from lmlab.training import build_module

    print(machine())
    n, prompt_len = args.new_tokens, args.prompt_tokens
    prompt = torch.randint(0, 50257, (args.batch, prompt_len))

    def lmlab(model, use_cache):
        return lambda: sample_tokens(model, prompt, n, temperature=0, use_cache=use_cache)

    torch.manual_seed(0)
    default = build_module(compose(args.overrides)).model.eval()
    print(f"greedy decoding of {n} new tokens after a {prompt_len}-token prompt, batch "
          f"{args.batch}, median of {args.repeats}")
    t = bench({"cache": lmlab(default, True), "recompute": lmlab(default, False)}, args.repeats, warmup=1)
    print(f"  default model (context {default.context_length}): KV cache {t['cache'] * 1e3:7.0f} ms "
          f"({args.batch * n / t['cache']:6.0f} tokens/s), recompute {t['recompute'] * 1e3:7.0f} ms: "
          f"cache is {t['recompute'] / t['cache']:.1f}x faster (target >= 5)")

    ctx = prompt_len + n  # long enough for transformers, which cannot go past its position table
    cfg = compose(args.overrides + [f"model.context_length={ctx}"])
    torch.manual_seed(0)
    model = build_module(cfg).model.eval()
    hf = hf_gpt2_like(OmegaConf.to_container(cfg.model, resolve=True))

    def transformers():
        with torch.no_grad():
            hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                        use_cache=True, pad_token_id=0, attention_mask=torch.ones_like(prompt))

    t = bench({"lmlab": lmlab(model, True), "transformers": transformers}, args.repeats, warmup=1)
    print(f"  same sizes, context {ctx}: lmlab {t['lmlab'] * 1e3:7.0f} ms, transformers GPT-2 "
          f"generate() {t['transformers'] * 1e3:7.0f} ms: lmlab is "
          f"{t['transformers'] / t['lmlab']:.2f}x as fast (target >= 1)")
