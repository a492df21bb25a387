"""Position-wise feed-forward layers.

Every FFN maps x (..., C) to y (..., C). The mixture of experts (moe.py) keeps its balancing
losses and routing statistics on itself, so dense FFNs need not know about them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import check_choice
from lmlab.checks import is_int, positive, positive_int_or_null, require
from lmlab.model.linear import Linear


class DenseFFN(nn.Module):
    """GPT-2's MLP: Linear(d, h) -> GELU -> Linear(h, d)."""

    def __init__(
        self,
        d_model: int,
        hidden_mult: float = 4.0,
        hidden_dim: int | None = None,
        activation: str = "gelu",
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        acts = {"gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"), "relu": nn.ReLU()}
        check_choice("model.ffn.activation", activation, acts)
        positive_int_or_null("model.ffn.hidden_dim", hidden_dim)
        positive("model.ffn.hidden_mult", hidden_mult)
        hidden = hidden_dim or max(1, int(hidden_mult * d_model))
        self.fc = Linear(d_model, hidden, bias=bias)
        self.act, self.act_name = acts[activation], activation
        self.proj = Linear(hidden, d_model, bias=bias)
        self.proj.residual_out = True  # scaled init, see Transformer._init_weights
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor):
        return self.drop(self.proj(self.act(self.fc(x))))


def swiglu_hidden(d_model: int, multiple_of: int = 64) -> int:
    """Llama's hidden width: 2/3 of 4d (same parameters as a 4d GELU MLP), rounded up."""
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """Shazeer (2020) GLU variant used by Llama: down(silu(gate(x)) * up(x))."""

    def __init__(
        self,
        d_model: int,
        hidden_dim: int | None = None,
        multiple_of: int = 64,
        bias: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        positive_int_or_null("model.ffn.hidden_dim", hidden_dim)
        require(is_int(multiple_of) and multiple_of >= 1, "model.ffn.multiple_of", multiple_of,
                "an integer >= 1")
        hidden = hidden_dim or swiglu_hidden(d_model, multiple_of)
        self.gate = Linear(d_model, hidden, bias=bias)
        self.up = Linear(d_model, hidden, bias=bias)
        self.down = Linear(hidden, d_model, bias=bias)
        self.down.residual_out = True
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor):
        return self.drop(self.down(F.silu(self.gate(x)) * self.up(x)))
