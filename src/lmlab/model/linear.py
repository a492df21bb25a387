"""The model's linear layers, with the product taken the fast way round for decoding on CPU.

Decoding multiplies a handful of rows by each weight. For that shape MKL's ``x @ W.T`` (a GEMV
for one row) reads the weight at a fraction of the memory bandwidth, while ``W @ x.T`` goes
through its GEMM and streams the weight near full speed, fastest with at least two rows. On a
2-core EPYC, fp32, weights not in cache (as in decoding, where the LM head's 51 MB evicts them),
``x @ W.T`` against ``W @ x.T``: 2.0-3.4x as long for 1 to 4 rows of a 704 x 256, 256 x 704 or
256 x 256 weight, 1.2-1.6x for 8 rows, and 0.5-1.2x, no clear winner, from 12 to 32 rows; for the
50,257 x 256 LM head 3.6x for one row, 2.0x for 8. So for up to ``FEW_ROWS`` fp32 rows on CPU the
product is taken as ``(W @ x.T).T``, one row computed as two; bf16 (autocast), GPUs and more
rows, training's case, use ``F.linear`` unchanged.

The LM head (:class:`LMHead`) goes further for a compiled decoding step of one or two rows on CPU:
it reads an fp16 copy of its weight, half the bytes. Out of cache on the same EPYC, the 50,257 x
256 head's product for one row took 0.7-1.0 ms that way against 1.7-1.9 ms in fp32 (1.6 against
1.9 ms for two rows; from four rows on the fp32 product wins). The logits then differ from fp32
by the weight's fp16 rounding (a relative 2^-11 per weight; accumulation stays fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = 8
HALF_ROWS = 2  # rows up to which a compiled CPU decoding step reads the LM head's fp16 copy


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul on x in, or x's own outside autocast."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., C_in), weight (C_out, C_in), bias (C_out,) or None -> x @ weight.T + bias (..., C_out)."""
    rows = x.reshape(-1, x.shape[-1])  # (N, C_in)
    if x.device.type != "cpu" or compute_dtype(x) != torch.float32 or len(rows) > FEW_ROWS:
        return F.linear(x, weight, bias)
    pair = torch.cat((rows, rows)) if len(rows) == 1 else rows  # (max(N, 2), C_in); not a stride-0 view
    y = (weight @ pair.t()).t()[: len(rows)]  # (N, C_out)
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and init) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def half_product(x: torch.Tensor, weight16: torch.Tensor) -> torch.Tensor:
    """x (..., C) fp32, weight16 (V, C) fp16 -> x @ weight16.T (..., V), accumulated in fp32. A
    multiply-and-sum that inductor fuses into one pass over the fp16 weight: call it compiled only
    (eagerly it would hold the (..., V, C) products)."""
    return (weight16.float() * x.unsqueeze(-2)).sum(-1)


class LMHead(Linear):
    """The LM head: a :class:`Linear` that also keeps, for compiled decoding on CPU, an fp16 copy
    of its weight (not a parameter or buffer: the state dict is unchanged), made again whenever the
    weight changes (its storage or its version counter, which every in-place update advances)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._half: torch.Tensor | None = None
        self._half_of: tuple | None = None  # (data_ptr, version) of the weight it copies

    def decoding_weight(self, rows: int) -> torch.Tensor | None:
        """The fp16 weight a compiled decoding step of ``rows`` rows reads, or None for the fp32
        product: off CPU, under autocast, past HALF_ROWS rows, with a bias, or where the weight
        has values beyond fp16's range."""
        w = self.weight
        if (w.device.type != "cpu" or w.dtype != torch.float32 or rows > HALF_ROWS
                or self.bias is not None or torch.is_autocast_enabled("cpu")):
            return None
        key = (w.data_ptr(), w._version)
        if self._half_of != key:
            with torch.no_grad():
                fits = bool(w.abs().max() <= torch.finfo(torch.float16).max)
                self._half = w.half() if fits else None
            self._half_of = key
        return self._half
