"""The KV cache for decoding: each layer's keys and values of B sequences in buffers of
``max_len`` slots that are allocated once and filled in place (no concatenation per step).

Slots are shared by all layers: ``KVCache`` records, for every slot of every row, the absolute
position of its token and whether it holds a real token or left-padding (batched prompts of
different lengths). Rows without padding all share one position vector, so the common case keeps
1-D positions and plain causal masks. Keys are stored after the position rotation (RoPE) and the
QK-norm, so a decoding step only computes the newest token's keys.

A ``static`` cache (what a compiled model decodes with) hands attention the whole buffers every
step, with a mask that hides the empty slots, instead of views of the filled part: every decoding
step then has the same shapes and reads no Python counters, so one compiled step serves them all.
"""

from __future__ import annotations

import torch


class LayerKV:
    """One layer's keys and values, (B, n_kv_heads, max_len, head_dim) each, allocated on the first
    write with the dtype and device of the keys written."""

    def __init__(self, slots: KVCache):
        self.slots = slots
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def write(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nkv, T, hs) in the slots the current forward claimed; return the keys
        and values of all filled slots, (B, nkv, S, hs) views of the buffers (a static cache:
        the whole buffers, S = max_len)."""
        B, nkv, T, hs = k.shape
        if self.k is None:  # zeros: a static cache's attention reads the empty slots too, and
            # a masked key or value must still be finite (0 * nan is nan)
            self.k = k.new_zeros(B, nkv, self.slots.max_len, hs)
            self.v = v.new_zeros(B, nkv, self.slots.max_len, hs)
        if self.slots.static:  # the claimed slots' indices as a tensor; all max_len slots back
            self.k.index_copy_(2, self.slots.slot_ids, k)
            self.v.index_copy_(2, self.slots.slot_ids, v)
            return self.k, self.v
        start, end = self.slots.start, self.slots.end
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    @property
    def keys(self) -> torch.Tensor:  # (B, nkv, S, hs)
        return self.k[:, :, : self.slots.end]

    @property
    def values(self) -> torch.Tensor:  # (B, nkv, S, hs)
        return self.v[:, :, : self.slots.end]


class KVCache:
    """The cache of a whole model: one ``LayerKV`` per layer plus the slots' positions and padding."""

    def __init__(self, n_layers: int, max_len: int, static: bool = False):
        if max_len < 1:
            raise ValueError(f"KVCache: max_len must be at least 1, got {max_len}")
        self.max_len, self.static = max_len, static
        self.slot_ids: torch.Tensor | None = None  # static: (T,), the slots the current forward writes
        self.layers = [LayerKV(self) for _ in range(n_layers)]
        self.pos: torch.Tensor | None = None  # (B, max_len): absolute position of each slot's token
        self.real: torch.Tensor | None = None  # (B, max_len): False at left-padding (static: and empty) slots
        self.count: torch.Tensor | None = None  # (B,): real tokens seen per row
        self.padded = False  # whether any row holds padding
        self.start = self.end = 0  # the current forward writes slots [start, end)

    @classmethod
    def for_model(cls, model, max_len: int | None = None) -> KVCache:
        """A cache for ``model`` (anything with ``blocks``), by default of its context length;
        static if the model decodes with a compiled step (``model.compiled_decoding``)."""
        return cls(len(model.blocks), max_len or model.context_length,
                   static=getattr(model, "compiled_decoding", False))

    def __len__(self) -> int:
        return self.end

    def reset(self) -> None:
        """Empty the cache, keeping its buffers (restarting on a shorter window)."""
        self.start = self.end = 0
        self.padded = False
        if self.count is not None:
            self.count.zero_()
            self.real.fill_(not self.static)  # a static cache's empty slots are hidden

    def positions(self, B: int, T: int, pad: torch.Tensor | None, device) -> torch.Tensor:
        """Positions of T new tokens of each of B rows, continuing after the cached ones: (T,) when
        no row is padded, else (B, T); a padding token gets its row's next position (it is seen
        by no one). Raises if the T tokens do not fit. Changes nothing."""
        if self.end + T > self.max_len:
            raise ValueError(f"KV cache full: {self.end} + {T} tokens > max_len={self.max_len}")
        if pad is None and not self.padded:
            return torch.arange(self.end, self.end + T, device=device)
        count = self.count if self.count is not None else torch.zeros(B, dtype=torch.long, device=device)
        if pad is None:
            return count[:, None] + torch.arange(T, device=device)
        return count[:, None] + ((~pad).cumsum(1) - 1).clamp(min=0)  # (B, T)

    def claim(self, B: int, pos: torch.Tensor, pad: torch.Tensor | None) -> None:
        """Record T new tokens of each of B rows at ``pos`` ((T,) or (B, T)) in the next T slots."""
        T = pos.shape[-1]
        if self.pos is None:
            self.pos = torch.zeros(B, self.max_len, dtype=torch.long, device=pos.device)
            self.real = torch.full((B, self.max_len), not self.static, device=pos.device)
            self.count = torch.zeros(B, dtype=torch.long, device=pos.device)
        self.start, self.end = self.end, self.end + T
        if self.static:  # where write() puts the keys and values: (T,)
            self.slot_ids = torch.arange(self.start, self.end, device=pos.device)
        self.pos[:, self.start : self.end] = pos
        if pad is None:
            self.real[:, self.start : self.end] = True
            self.count += T
        else:
            self.real[:, self.start : self.end] = ~pad
            self.count += (~pad).sum(1)
            self.padded = self.padded or bool(pad.any())

    def key_positions(self) -> torch.Tensor:
        """Absolute positions of the filled slots: (S,), or (B, S) when a row is padded; of all
        max_len slots in a static cache."""
        end = self.max_len if self.static else self.end
        return self.pos[:, :end] if self.padded else self.pos[0, :end]

    def key_mask(self) -> torch.Tensor | None:
        """(B, S), False at padding slots; None when no row is padded. A static cache's mask
        covers all max_len slots, False at the empty ones too."""
        if self.static:
            return self.real
        return self.real[:, : self.end] if self.padded else None
