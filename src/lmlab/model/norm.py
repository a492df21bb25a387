"""Normalisation layers. Each takes the model width as its only required argument."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.checks import positive


class LayerNorm(nn.LayerNorm):
    """LayerNorm with an optional bias (GPT-2 uses one; many newer models drop it)."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True):
        positive("model.norm.eps", eps)
        super().__init__(d_model, eps=eps, bias=bias)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019), as in Llama: x / rms(x) * weight."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        positive("model.norm.eps", eps)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # computed in fp32 like Llama, then cast back
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight
