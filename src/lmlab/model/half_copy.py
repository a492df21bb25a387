"""fp16 copies of a model's blocks and LM head, read by its compiled decoding steps on CPU.

Decoding one or two rows is memory-bound: every step reads every weight for a handful of
products. Reading fp16 copies halves those bytes. On a 2-core EPYC (~30-50 GB/s) the default
model's compiled decoding step of one row went from 2.7-3.4 to 1.5-1.8 ms a token (1.73-1.78x
in one process): the LM head's product from 1.7-1.9 to 0.7-1.0 ms, and the blocks' 28 small
products, now fused multiply-and-sums (``linear.half_product``) instead of MKL calls, faster
too. Activations, norms, attention and every sum stay fp32, so the logits differ from fp32
decoding only by the weights' fp16 rounding (2^-11 relative per weight).

The copies are not parameters or buffers: the state dict, the optimizer and checkpoints never see
them. They follow the model: before each step :meth:`HalfCopy.refresh` compares every source
tensor's storage and version counter (which every in-place update, an optimizer step or
``load_state_dict``, advances) and copies the weights again, in place, when one has changed, so
the compiled step's inputs keep their identity and nothing recompiles.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

HALF_ROWS = 2  # rows up to which a decoding step reads the copies (from four rows fp32 is faster)
FP16_MAX = torch.finfo(torch.float16).max


class HalfCopy:
    """The blocks (a copy in eval mode whose linear weights are fp16, the rest fp32) and the LM
    head's weight (fp16) of ``model``, kept equal to the model's current weights by :meth:`refresh`."""

    @torch.inference_mode(False)  # normal tensors, which refresh may update outside inference mode
    def __init__(self, model: nn.Module):
        self.blocks = copy.deepcopy(model.blocks).requires_grad_(False).eval()
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                m.weight = nn.Parameter(m.weight.detach().half(), requires_grad=False)
        self.head = model.lm_head.weight.detach().half()  # (V, C)
        self.pairs = [*zip(model.blocks.parameters(), self.blocks.parameters()),
                      (model.lm_head.weight, self.head)]  # (source, copy)
        self.halved = [src for src, dst in self.pairs if dst.dtype == torch.float16]
        self.fits = True
        self.of: tuple | None = None  # the sources' (data_ptr, version) the copies were made from

    def refresh(self) -> bool:
        """Copy the sources again if any has changed since the last call (a check every decoding
        step); whether the copies can be used (False while an fp16-bound weight holds a value past
        fp16's range)."""
        of = tuple((src.data_ptr(), src._version) for src, _ in self.pairs)
        if of != self.of:
            self._copy()
            self.of = of
        return self.fits

    @torch.inference_mode(False)
    @torch.no_grad()
    def _copy(self) -> None:
        self.fits = all(bool(src.abs().max() <= FP16_MAX) for src in self.halved)
        for src, dst in self.pairs:
            dst.copy_(src)
