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

A compiled decoding step of one or two rows on CPU goes further: it reads fp16 copies of the
weights (``half_copy.py``), half the bytes, and an fp16 weight meeting fp32 input is multiplied by
:func:`half_product`, which inductor fuses into one pass over the weight. Out of cache on the same
EPYC, the 50,257 x 256 LM head's product for one row took 0.7-1.0 ms that way against 1.7-1.9 ms
in fp32 (1.6 against 1.9 ms for two rows; from four rows on the fp32 product wins).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = 8


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul on x in, or x's own outside autocast."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., C_in), weight (C_out, C_in), bias (C_out,) or None -> x @ weight.T + bias (..., C_out)."""
    if weight.dtype == torch.float16 and x.dtype == torch.float32:  # a decoding copy's weight
        y = half_product(x, weight)
        return y if bias is None else y + bias
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
