"""Activation checkpointing (``model.activation_checkpointing=true``): each block keeps only its
input for the backward pass and runs its forward again there to get the rest (Chen et al. 2016,
"Training deep nets with sublinear memory cost"; the "full" mode of torchtitan and litgpt).

Training activations then cost one (B, T, C) tensor per block instead of every intermediate of
attention and the FFN, for one more forward pass of the blocks per step (a third more of the
blocks' compute; 5-8% more step time for the default model, whose LM head is most of its compute:
``benchmark.py recompute``). The recomputation is PyTorch's non-reentrant
``torch.utils.checkpoint``: it restores the RNG state, so dropout draws the same masks, and the
gradients equal those of a plain pass.

A layer that records something in its forward (MoE's token counts for loss-free balancing) asks
:func:`recomputing` so that the second pass does not count the same tokens again.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

_recomputing = False


def recomputing() -> bool:
    """Whether the forward now running is a checkpointed block's recomputation in backward."""
    return _recomputing


@contextmanager
def _recomputation():
    global _recomputing
    outer, _recomputing = _recomputing, True
    try:
        yield
    finally:
        _recomputing = outer


def checkpointed(fn: Callable[..., torch.Tensor], *args) -> torch.Tensor:
    """fn(*args), keeping only its inputs for backward, where it runs again."""
    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), _recomputation()))
