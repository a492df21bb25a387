"""Causal self-attention: MHA, GQA and MQA are one class with ``n_kv_heads``.

``n_kv_heads = n_heads`` is multi-head attention, a proper divisor is grouped-query attention
(Ainslie et al., 2023) and 1 is multi-query attention (Shazeer, 2019).

Options: ``qk_norm`` RMS-normalises each head's queries and keys over the head dimension before
the position rotation (Dehghani et al. 2023; OLMo 2, Qwen 3); ``window`` restricts every query to
the ``window`` most recent keys, itself included (sliding-window attention, as in Mistral), in
both kernels and with the KV cache.

Kernels: ``sdpa`` is PyTorch's fused attention (flash / memory-efficient where available),
``manual`` the math path (scores, softmax accumulated in fp32, weights @ values), and ``auto``
(the default) picks the math path on CPU under bf16 for up to ``MATH_MAX_KEYS`` keys and ``sdpa``
elsewhere. On a 2-core EPYC with AVX512-BF16 the math path's training step ran 1.04-1.10x faster
than CPU flash attention at contexts of 128 to 512 (CPU flash attention's bf16 backward is the
slow part), 1.00x at 1,024, and 0.99x in fp32. In the math path the causal mask is added, not
filled in, and the softmax runs in the scores' dtype: each measured 1.00-1.03x on the bf16 step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import check_choice
from lmlab.kv_cache import LayerKV
from lmlab.checks import positive, positive_int_or_null, require
from lmlab.model.linear import Linear, compute_dtype
from lmlab.model.norm import RMSNorm
from lmlab.model.position import Position

KERNELS = ("auto", "sdpa", "manual")
MATH_MAX_KEYS = 512  # auto: the math path on CPU in bf16 up to this many keys


class Attention(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        kernel: str = "auto",
        qkv_bias: bool | None = None,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        window: int | None = None,
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads  # d_model % n_heads: Transformer
        positive_int_or_null("model.attention.n_kv_heads", n_kv_heads)
        require(qkv_bias in (None, True, False), "model.attention.qkv_bias", qkv_bias,
                "true, false or null (null: model.bias)")
        positive("model.attention.qk_norm_eps", qk_norm_eps)
        if n_heads % n_kv_heads:
            raise ValueError(
                f"model.n_heads={n_heads} is not divisible by model.attention.n_kv_heads={n_kv_heads}"
            )
        check_choice("model.attention.kernel", kernel, KERNELS)
        positive_int_or_null("model.attention.window", window)  # true is not a window of 1
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.kernel, self.dropout, self.window = kernel, dropout, window
        self.q_norm = RMSNorm(self.head_dim, eps=qk_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=qk_norm_eps) if qk_norm else None
        qkv_bias = bias if qkv_bias is None else qkv_bias
        self.q = Linear(d_model, n_heads * self.head_dim, bias=qkv_bias)
        self.k = Linear(d_model, n_kv_heads * self.head_dim, bias=qkv_bias)
        self.v = Linear(d_model, n_kv_heads * self.head_dim, bias=qkv_bias)
        self.proj = Linear(d_model, d_model, bias=bias)
        self.proj.residual_out = True
        self.resid_drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        position: Position,
        pos: torch.Tensor,
        cache: LayerKV | None = None,
        real: torch.Tensor | None = None,
        need_weights: bool = False,
    ):
        """x (B, T, C) at positions ``pos`` (T,) or, per row, (B, T). ``cache``: this layer's
        keys and values of earlier tokens, extended in place. ``real`` (B, T): False at
        left-padding tokens, which no query attends to (uncached calls; a cache keeps its own)."""
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = position.rotate(q, k, pos, pos)
        k_pos = pos
        if cache is not None:  # keys and values of earlier positions, already rotated
            k, v = cache.write(k, v)  # (B, nkv, S, hs), views of the preallocated buffers
            k_pos, real = cache.slots.key_positions(), cache.slots.key_mask()
        mask = self._mask(position, pos, k_pos, real, x.dtype)  # None, or broadcastable (B, nh, Tq, Tk)
        drop = self.dropout if self.training else 0.0
        weights = None
        if not need_weights and self._fused(q, k):
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=drop, is_causal=mask is None and T > 1,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )  # (B, nh, T, hs)
        else:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            scores = (q * (1 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)  # (B, nh, Tq, Tk)
            if mask is None and T > 1:  # added: masked_fill's backward is slower
                mask = torch.full((T, T), float("-inf"), dtype=scores.dtype, device=x.device).triu_(1)
            if mask is not None:
                scores = scores + mask
            weights = F.softmax(scores, dim=-1).type_as(q)  # accumulated in fp32 by the kernel
            y = F.dropout(weights, drop, self.training) @ v  # (B, nh, Tq, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        y = self.resid_drop(self.proj(y))
        return (y, weights) if need_weights else y

    def _fused(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        """Whether this call uses ``sdpa``: always or never as chosen, or, with ``auto``, unless
        on CPU under bf16 with at most MATH_MAX_KEYS keys (k: (B, nkv, Tk, hs))."""
        if self.kernel != "auto":
            return self.kernel == "sdpa"
        cpu_bf16 = q.device.type == "cpu" and compute_dtype(q) == torch.bfloat16
        return not (cpu_bf16 and k.shape[-2] <= MATH_MAX_KEYS)

    def _mask(self, position: Position, q_pos, k_pos, real, dtype):
        """The additive mask: causal (-inf for keys at later positions; with a window, also for
        keys ``window`` or more positions back; and for padding keys) plus the position bias, if
        any: (1|nh, Tq, Tk), or (B, 1|nh, Tq, Tk) for per-row positions or padding. None when a
        plain causal mask over aligned queries and keys is all that is needed."""
        bias = position.bias(q_pos, k_pos)
        plain = bias is None and self.window is None and real is None
        if plain and q_pos.dim() == 1 and len(q_pos) in (1, len(k_pos)):
            return None  # aligned: causal; a single newest query: sees every key
        back = q_pos[..., :, None] - k_pos[..., None, :]  # (Tq, Tk) or (B, Tq, Tk): how far back
        visible = back >= 0
        if self.window is not None:
            visible &= back < self.window
        if real is not None:
            visible = visible & real[:, None, :]  # (B, Tq, Tk)
        mask = torch.zeros(visible.shape, device=q_pos.device).masked_fill(~visible, float("-inf"))
        mask = mask.unsqueeze(-3)  # (1, Tq, Tk) or (B, 1, Tq, Tk)
        if bias is not None:
            mask = mask + bias  # (nh, Tq, Tk) or (B, nh, Tq, Tk)
        return mask.to(dtype)
