"""Sampling from a model: greedy, temperature, top-k and top-p (nucleus), with a KV cache;
``sample_tokens`` extends token ids, ``sample_text`` turns a prompt into text."""

from __future__ import annotations

import torch

from lmlab.model.transformer import Transformer


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, vocab) -> next ids (B, 1). temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (keeps at least one)
        drop_sorted = cum - sorted_logits.softmax(dim=-1) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def sample_tokens(
    model: Transformer,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> torch.Tensor:
    """Extend idx (B, T) by up to ``max_new_tokens`` tokens. With ``use_cache`` the prompt is
    processed once and each step feeds only the newest token; without it, every step recomputes
    the (cropped) whole sequence."""
    was_training = model.training
    model.eval()
    ctx = model.context_length
    caches = [{} for _ in model.blocks] if use_cache else None
    step_input = idx[:, -ctx:]
    for _ in range(max_new_tokens):
        if use_cache and caches[0] and caches[0]["k"].shape[2] >= ctx:
            # the cache is full: restart it on the last context window
            caches = [{} for _ in model.blocks]
            step_input = idx[:, -ctx + 1 :]
        logits = model(step_input, caches).logits[:, -1, :]  # (B, vocab)
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        idx = torch.cat([idx, nxt], dim=1)
        step_input = nxt if use_cache else idx[:, -ctx:]
        if eos_id is not None and bool((nxt == eos_id).all()):
            break
    model.train(was_training)
    return idx


def sample_text(model: Transformer, tokenizer_name: str, prompt: str, seed: int = 0, **kwargs) -> str:
    """``prompt`` followed by what the model samples after it (``kwargs``: see sample_tokens)."""
    from lmlab.data.tokenizer import get_tokenizer

    enc = get_tokenizer(tokenizer_name)
    device = next(model.parameters()).device
    idx = torch.tensor([enc.encode(prompt, allowed_special="all")], device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = sample_tokens(model, idx, generator=gen, **kwargs)
    return enc.decode(out[0].tolist())
