"""Position encodings behind one small interface.

Every kind implements the hooks of :class:`Position` and is a no-op where a hook does not apply,
so neither the attention layer nor the transformer ever asks which kind it has:

- ``embed(x, pos)``: add to the token embeddings ``x`` (B, T, C) (learned, sinusoidal);
- ``rotate(q, k, q_pos, k_pos)``: rotate queries (B, nh, Tq, hs) and keys (B, nkv, Tk, hs) (RoPE);
- ``bias(q_pos, k_pos)``: a (nh, Tq, Tk) additive bias on the attention scores, or None (ALiBi);
- ``check_positions(end)``: refuse, before any compute, positions up to ``end`` that the kind
  cannot encode (learned).

``pos`` tensors hold absolute positions, (T,) or per row (B, T) (batched prompts of different
lengths), so that decoding with a KV cache continues where the prompt stopped.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmlab.errors import check_choice
from lmlab.checks import positive, positive_int_or_null


class Position(nn.Module):
    """The interface, with every hook a no-op. Not a choice itself: NoPE is :class:`NoPosition`."""

    def __init__(self):
        if type(self) is Position:
            raise TypeError("Position is the interface of the position kinds; NoPE is NoPosition")
        super().__init__()

    def check_positions(self, end: int) -> None:
        """Raise ValueError if positions 0 .. end-1 cannot all be encoded."""

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(self, q, k, q_pos, k_pos):
        return q, k

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        return None


class NoPosition(Position):
    """NoPE: no position information at all (causal masking alone leaks some)."""

    def __init__(self, **dims):
        super().__init__()


class Learned(Position):
    """GPT-2's learned absolute position table: ``max_positions`` rows (default: context_length).
    A table shorter than the model's context is refused; so is any position past the table."""

    def __init__(self, d_model: int, context_length: int, max_positions: int | None = None, **dims):
        super().__init__()
        positive_int_or_null("model.position.max_positions", max_positions)
        rows = max_positions or context_length
        if rows < context_length:
            raise ValueError(
                f"model.position.max_positions={rows} is shorter than model.context_length="
                f"{context_length}; a learned table needs a row per position"
            )
        self.table = nn.Embedding(rows, d_model)

    def check_positions(self, end: int) -> None:
        rows = self.table.num_embeddings
        if end > rows:
            raise ValueError(
                f"{end} positions are more than the learned position table's {rows} rows "
                f"(model.position.max_positions, default model.context_length); crop the input "
                f"or use a relative position kind"
            )

    def embed(self, x, pos):
        return x + self.table(pos)  # (B, T, C) + (T, C)


class Sinusoidal(Position):
    """Fixed sines and cosines of Vaswani et al. (2017), computed for any position."""

    def __init__(self, d_model: int, base: float = 10000.0, **dims):
        super().__init__()
        positive("model.position.base", base)
        inv_freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.d_model = d_model

    def embed(self, x, pos):
        angles = pos.float()[..., None] * self.inv_freq  # (T, C/2) or (B, T, C/2)
        pe = torch.zeros(*pos.shape, self.d_model, device=x.device)
        pe[..., 0::2] = torch.sin(angles)
        pe[..., 1::2] = torch.cos(angles[..., : self.d_model // 2])
        return x + pe.to(x.dtype)


class RoPE(Position):
    """Rotary embeddings (Su et al., 2021) in the rotate-half layout of GPT-NeoX and Llama.

    ``scaling`` extends the context by ``factor``: ``linear`` (position interpolation, Chen et al.
    2023) divides positions by ``factor``; ``ntk`` (NTK-aware) raises the base to
    base * factor^(d/(d-2)); ``yarn`` (Peng et al. 2023) interpolates only the low frequencies,
    those with fewer than ``beta_slow`` turns over ``original_context``, keeps those with more than
    ``beta_fast`` turns, ramps linearly in between, and scales the logits by (0.1 ln s + 1)^2.
    """

    SCALINGS = (None, "linear", "ntk", "yarn")

    def __init__(
        self,
        head_dim: int,
        base: float = 10000.0,
        scaling: str | None = None,
        factor: float = 1.0,
        original_context: int | None = None,
        beta_fast: float = 32.0,
        beta_slow: float = 1.0,
        context_length: int | None = None,
        **dims,
    ):
        super().__init__()
        if head_dim % 2:
            raise ValueError(
                f"model/position=rope needs an even head size, got head_dim={head_dim} "
                f"(model.d_model / model.n_heads)"
            )
        check_choice("model.position.scaling", scaling, self.SCALINGS)
        positive("model.position.base", base)
        positive("model.position.factor", factor)
        positive_int_or_null("model.position.original_context", original_context)
        self.scaling, self.base = scaling, base
        if scaling == "ntk":
            base = base * factor ** (head_dim / (head_dim - 2))
        self.pos_scale = factor if scaling == "linear" else 1.0
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.mscale = 1.0
        if scaling == "yarn" and factor > 1.0:
            # turns of each frequency over the original context, r = L / wavelength
            L = original_context or (context_length / factor if context_length else None)
            if not L:
                raise ValueError("model.position.scaling=yarn needs model.position.original_context")
            turns = L * inv_freq / (2 * math.pi)
            keep = ((turns - beta_slow) / (beta_fast - beta_slow)).clamp(0, 1)  # 1: extrapolate
            inv_freq = keep * inv_freq + (1 - keep) * inv_freq / factor
            self.mscale = 0.1 * math.log(factor) + 1.0
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def _cos_sin(self, pos: torch.Tensor):
        angles = (pos.float() / self.pos_scale)[..., None] * self.inv_freq  # (T, hs/2) or (B, T, hs/2)
        if pos.dim() == 2:  # per-row positions
            angles = angles[:, None]  # (B, 1, T, hs/2), broadcast over heads
        angles = torch.cat([angles, angles], dim=-1)  # (..., T, hs)
        return angles.cos() * self.mscale, angles.sin() * self.mscale

    @staticmethod
    def _rotate(x, cos, sin):
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return (x.float() * cos + rotated.float() * sin).type_as(x)

    def rotate(self, q, k, q_pos, k_pos):
        qc, qs = self._cos_sin(q_pos)
        kc, ks = (qc, qs) if k_pos is q_pos else self._cos_sin(k_pos)  # self-attention: one table
        return self._rotate(q, qc, qs), self._rotate(k, kc, ks)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Head slopes of Press et al. (2022): a geometric sequence starting at 2^(-8/n). For a head
    count that is not a power of two, the paper takes the slopes of the closest lower power of two
    and fills up with every other slope of the next power of two."""

    def pow2(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(pow2(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = pow2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(pow2(closest) + extra)


class ALiBi(Position):
    """Attention with linear biases: score(i, j) += -slope_h * (i - j)."""

    def __init__(self, n_heads: int, **dims):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def bias(self, q_pos, k_pos):
        distance = (k_pos[..., None, :] - q_pos[..., :, None]).float()  # ([B,] Tq, Tk), <= 0 where visible
        return self.slopes[:, None, None] * distance.unsqueeze(-3)  # ([B,] nh, Tq, Tk)
