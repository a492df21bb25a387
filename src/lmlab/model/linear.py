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
