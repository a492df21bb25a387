"""The LM head with cross-entropy as one autograd function that never holds fp32 logits.

``F.cross_entropy(x @ W.T)`` keeps the logits for backward and, under autocast, an fp32 copy and
an fp32 log-softmax of them: at 1024 tokens x 50,257 words that is 600 MB of memory-bound passes
per step, the largest non-matmul cost of a small model. Here the forward pass computes the logits
(N, V) in the compute dtype, then, a few rows at a time while they are in cache, the fp32 softmax,
the target's probability and the gradient ``softmax - onehot``, written over the logits in place;
each loss is ``-log`` of its target's probability (exact to fp32 rounding; where that probability
underflows, a loss above ~87 nats, the row's logits are taken again and its loss is a
log-sum-exp: one check per step, no pass over the logits for their maximum). Backward is
two matmuls on that buffer; the weight's gradient is taken in vocabulary chunks (a bf16
``g.T @ x`` over all 50,257 columns at once runs at two thirds of the speed of 8,192-column
slices on a 2-core EPYC) and accumulated in the weight's own dtype.

On a GPU the vocabulary is padded (with zero rows of the weight, for the product only) to a
multiple of ``PAD_VOCAB``: cuBLAS's Hopper kernels need rows of logits that start 16-byte
aligned, and 50,257 bf16 columns do not. Unpadded, the head's three matmuls ran in a fallback
kernel at ~95 TFLOP/s on an H200, 31 ms of a 67 ms GPT-2 step. The padded columns' logits are
exactly 0 and never enter the softmax; their gradient is 0.

The loss is the mean over tokens, as ``F.cross_entropy``: the logits are rounded to the compute
dtype exactly as autocast's matmul rounds them, and everything after is fp32.
"""

from __future__ import annotations

import torch

from lmlab.model.linear import compute_dtype

ROW_BYTES = 1 << 22  # fp32 softmax rows handled at once on CPU: 4 MB, about a core's share of cache
GPU_ROW_BYTES = 1 << 28  # on a GPU: 256 MB, so that a batch is a few kernel launches, not hundreds
VOCAB_CHUNK = 8192   # columns of the weight gradient per matmul
PAD_VOCAB = {"cuda": 64}  # device type -> the multiple the vocabulary is padded to (else none)


def padded_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """weight (V, C) -> (Vp, C) in ``dtype``, Vp the vocabulary rounded up to its device's
    ``PAD_VOCAB`` multiple, the added rows zero; one pass, like the cast it replaces."""
    V, C = weight.shape
    multiple = PAD_VOCAB.get(weight.device.type, 1)
    Vp = -(-V // multiple) * multiple
    if Vp == V:
        return weight.to(dtype)
    padded = weight.new_zeros((Vp, C), dtype=dtype)
    padded[:V].copy_(weight)
    return padded


def target_probs_and_grad(logits: torch.Tensor, targets: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """logits (r, V), targets (r,) -> each target's probability (r,) in ``acc``; the logits are
    overwritten by the gradient of the summed losses, ``softmax - onehot``."""
    t = targets[:, None]  # (r, 1)
    p = torch.softmax(logits, dim=-1, dtype=acc)  # (r, V)
    p_target = p.gather(1, t)[:, 0]  # (r,)
    logits.copy_(p.scatter_add_(1, t, p.new_full(t.shape, -1.0)))
    return p_target


def cross_entropy_rows(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, acc) -> torch.Tensor:
    """x (r, C), weight (V, C), targets (r,) -> the rows' cross-entropy (r,) in ``acc``, by
    log-sum-exp over their logits computed afresh."""
    logits = (x @ weight.t()).to(acc)  # (r, V)
    return logits.logsumexp(-1) - logits.gather(1, targets[:, None])[:, 0]


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype):
        # x (N, C), weight (V, C), targets (N,) -> mean cross-entropy of x @ weight.T, fp32 scalar
        with torch.autocast(x.device.type, enabled=False):
            N, V = x.shape[0], weight.shape[0]
            xc, wc = x.to(dtype), padded_weight(weight, dtype)  # (N, C), (Vp, C)
            padded = xc @ wc.t()  # (N, Vp): the logits, overwritten below by their gradient
            grad = padded[:, :V]  # (N, V), a view
            acc = torch.promote_types(dtype, torch.float32)  # fp32, or fp64 for gradcheck
            rows = max(1, (ROW_BYTES if grad.device.type == "cpu" else GPU_ROW_BYTES) // (4 * V))
            p_target = torch.cat([target_probs_and_grad(grad[i:i + rows], targets[i:i + rows], acc)
                                  for i in range(0, N, rows)])  # (N,)
            losses = -p_target.log()
            # rows whose target is so unlikely its probability underflowed: one check per step,
            # and those rows' logits are taken again
            lost = (p_target < torch.finfo(acc).tiny).nonzero()[:, 0]
            if len(lost):
                losses[lost] = cross_entropy_rows(xc[lost], wc[:V], targets[lost], acc)
        ctx.save_for_backward(padded, xc, wc)
        ctx.dtypes = (x.dtype, weight.dtype, V)
        return losses.mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad, xc, wc = ctx.saved_tensors  # (N, Vp) softmax - onehot (0 past V), (N, C), (Vp, C)
        x_dtype, w_dtype, V = ctx.dtypes
        scale = grad_loss / grad.shape[0]  # d mean / d loss_i
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = (grad @ wc).mul_(scale).to(x_dtype)  # (N, C)
        if ctx.needs_input_grad[1]:
            xs = (xc * scale).to(xc.dtype)
            dw = torch.empty((V, wc.shape[1]), dtype=w_dtype, device=wc.device)  # (V, C)
            for v in range(0, V, VOCAB_CHUNK):
                dw[v:v + VOCAB_CHUNK].copy_(grad[:, v:min(v + VOCAB_CHUNK, V)].t() @ xs)
        return dx, dw, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """x (..., C) features, weight (V, C), targets (...) -> the mean cross-entropy of the logits
    x @ weight.T, as ``F.cross_entropy`` over fp32 logits rounded to the autocast dtype."""
    flat = x.reshape(-1, x.shape[-1])
    return LinearCrossEntropy.apply(flat, weight, targets.reshape(-1), compute_dtype(x))
