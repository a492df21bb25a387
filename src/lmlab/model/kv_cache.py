"""The per-layer KV cache: a plain dict per attention layer, filled by ``append_kv``.

Keys and values go into buffers allocated once for ``cache["capacity"]`` positions (set it
before the first call; without it the buffer grows by doubling), so decoding writes one position
per step instead of concatenating, and reallocating, the whole cache every step.
``cache["k"]``/``cache["v"]`` are views of the filled part: (B, n_kv_heads, length, head_dim).
"""

from __future__ import annotations

import torch


def _grow(buf: torch.Tensor | None, like: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    new = like.new_empty(like.shape[0], like.shape[1], capacity, like.shape[3])
    if buf is not None:
        new[:, :, :length] = buf[:, :, :length]
    return new


def append_kv(cache: dict, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append k, v (B, nkv, T, hs) to ``cache``; return all cached keys and values so far."""
    length, T = cache.get("length", 0), k.shape[2]
    buf_k, buf_v = cache.get("k_buf"), cache.get("v_buf")
    if buf_k is None or length + T > buf_k.shape[2]:
        capacity = max(cache.get("capacity") or 0, length + T,
                       2 * buf_k.shape[2] if buf_k is not None else 0)
        buf_k, buf_v = _grow(buf_k, k, length, capacity), _grow(buf_v, v, length, capacity)
        cache["k_buf"], cache["v_buf"] = buf_k, buf_v
    buf_k[:, :, length:length + T] = k
    buf_v[:, :, length:length + T] = v
    cache["length"] = length + T
    cache["k"], cache["v"] = buf_k[:, :, :length + T], buf_v[:, :, :length + T]
    return cache["k"], cache["v"]


def new_caches(n_layers: int, capacity: int | None = None) -> list[dict]:
    """One empty cache per layer, each preallocating ``capacity`` positions on first use."""
    return [{"capacity": capacity} for _ in range(n_layers)]
