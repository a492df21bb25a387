"""Sampling from a model: greedy, temperature, top-k and top-p (nucleus), with a KV cache;
``sample_tokens`` extends token ids, ``sample_text`` turns a prompt into text."""

from __future__ import annotations

from typing import Callable, TextIO

import torch

from lmlab.model.kv_cache import new_caches
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
    on_token: Callable[[torch.Tensor], None] | None = None,
    finished: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Extend idx (B, T) by up to ``max_new_tokens`` tokens; every row is its own sequence.

    With ``use_cache`` the prompt is processed once and each step feeds only the newest token
    through preallocated key/value buffers; when they hold a full context, decoding restarts on
    the last half context (a learned position table cannot slide). Without it, every step
    recomputes the (cropped) whole sequence. ``on_token(ids (B, 1))`` sees each new token as it
    is sampled (streaming); generation stops early once every row has produced ``eos_id`` or
    ``finished(new ids (B, n)) -> (B,) bool`` holds for every row (stop strings)."""
    was_training = model.training
    model.eval()
    ctx, n_prompt = model.context_length, idx.shape[1]
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    caches, step_input = None, idx[:, -ctx:]
    for _ in range(max_new_tokens):
        if use_cache and (caches is None or caches[0]["length"] >= ctx):
            step_input = idx[:, -(ctx // 2 if caches else ctx):]  # (re)fill the cache
            caches = new_caches(len(model.blocks), min(ctx, step_input.shape[1] + max_new_tokens))
        features = model.features(step_input, caches).features[:, -1]  # (B, C)
        logits = model.lm_head(features)  # (B, vocab): the head only where it is needed
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
        step_input = nxt if use_cache else idx[:, -ctx:]
        if on_token is not None:
            on_token(nxt)
        if eos_id is not None:
            done |= nxt[:, 0] == eos_id
        if finished is not None:
            done |= finished(idx[:, n_prompt:])
        if bool(done.all()):
            break
    model.train(was_training)
    return idx


def sample_texts(
    model: Transformer,
    tokenizer_name: str,
    prompts: list[str],
    num_samples: int = 1,
    stop: list[str] | tuple[str, ...] = (),
    stream: TextIO | None = None,
    seed: int = 0,
    **kwargs,
) -> list[list[str]]:
    """``num_samples`` continuations of each prompt (prompt included), as [prompt][sample].
    Prompts of the same token length and their samples share one batch. A sample ends before
    the first of the ``stop`` strings it produces. With ``stream`` and a single sequence to
    make, its text is written there as it is produced. ``kwargs``: see sample_tokens."""
    from lmlab.data.tokenizer import get_tokenizer

    enc = get_tokenizer(tokenizer_name)
    device = next(model.parameters()).device
    encoded = [enc.encode(p, allowed_special="all") for p in prompts]
    gen = torch.Generator(device=device).manual_seed(seed)
    out: list[list[str]] = [[] for _ in prompts]
    for length in sorted({len(e) for e in encoded}):
        members = [i for i, e in enumerate(encoded) if len(e) == length]
        idx = torch.tensor([encoded[i] for i in members for _ in range(num_samples)], device=device)
        texts = _TextRows(enc, len(members) * num_samples, stop,
                          stream if len(prompts) * num_samples == 1 else None)
        result = sample_tokens(model, idx, generator=gen, on_token=texts.add,
                               finished=texts.finished if stop else None, **kwargs)
        for row, i in enumerate(r for r in members for _ in range(num_samples)):
            out[i].append(prompts[i] + texts.final(row, result[row, length:].tolist()))
    return out


class _TextRows:
    """New text per row while sampling: stop strings and streaming."""

    def __init__(self, enc, rows: int, stop, stream: TextIO | None):
        self.enc, self.stop, self.stream = enc, list(stop), stream
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.shown = 0

    def add(self, nxt: torch.Tensor) -> None:
        for row, t in zip(self.ids, nxt[:, 0].tolist()):
            row.append(t)
        if self.stream is not None:
            text = self.cut(self.enc.decode(self.ids[0]))
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                self.stream.write(text[self.shown:])
                self.stream.flush()
                self.shown = len(text)

    def cut(self, text: str) -> str:
        ends = [text.find(s) for s in self.stop if s in text]
        return text[: min(ends)] if ends else text

    def finished(self, new_ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([any(s in self.enc.decode(r) for s in self.stop) for r in self.ids])

    def final(self, row: int, ids: list[int]) -> str:
        return self.cut(self.enc.decode(ids))


def sample_text(model: Transformer, tokenizer_name: str, prompt: str, seed: int = 0, **kwargs) -> str:
    """``prompt`` followed by what the model samples after it (``kwargs``: see sample_texts)."""
    return sample_texts(model, tokenizer_name, [prompt], seed=seed, **kwargs)[0][0]
