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

That buffer is kept for backward up to ``KEPT_BYTES`` (512 MB on a CPU: the default run's 1,024
rows x 50,257 fp32 are 206 MB; 2 GB elsewhere). Past it, at longer contexts or larger batches,
the rows go in even blocks of at most that size, and each block's buffer is multiplied out in
forward into the gradients of the summed losses, dx (N, C) and dw (V, C), which backward only
scales: the loss then keeps those two, not N x V, for the same matmuls (the approach of mgmalek's
efficient_cross_entropy and Liger Kernel's fused linear cross-entropy). Without gradients
(validation) no buffer outlives its block. On a 2-core EPYC, fp32, the head and loss of 4,096
rows took 1.02x as long in two blocks (256 MB: 1.04x in four); 2,048 rows, kept, as before.

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
KEPT_BYTES = {"cpu": 1 << 29}  # device type -> the largest gradient buffer kept for backward
KEPT_BYTES_ELSEWHERE = 1 << 31


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


def losses_and_grad(xc: torch.Tensor, wc: torch.Tensor, targets: torch.Tensor, V: int, acc):
    """xc (r, C), wc (Vp, C) in the compute dtype, targets (r,) -> (the gradient of the rows'
    summed losses with respect to their logits, ``softmax - onehot`` (r, Vp), 0 past V, in the
    compute dtype; the rows' losses (r,) in ``acc``)."""
    r = xc.shape[0]
    padded = xc @ wc.t()  # (r, Vp): the logits, overwritten below by their gradient
    grad = padded[:, :V]  # (r, V), a view
    rows = max(1, (ROW_BYTES if grad.device.type == "cpu" else GPU_ROW_BYTES) // (4 * V))
    p_target = torch.cat([target_probs_and_grad(grad[i:i + rows], targets[i:i + rows], acc)
                          for i in range(0, r, rows)])  # (r,)
    losses = -p_target.log()
    # rows whose target is so unlikely its probability underflowed: one check per block, and
    # those rows' logits are taken again
    lost = (p_target < torch.finfo(acc).tiny).nonzero()[:, 0]
    if len(lost):
        losses[lost] = cross_entropy_rows(xc[lost], wc[:V], targets[lost], acc)
    return padded, losses


def weight_grad(dw: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, accumulate: bool) -> None:
    """dw (V, C) = (or +=) grad[:, :V].T @ x, grad (r, Vp), x (r, C), in vocabulary chunks; added
    by the matmul itself where dw has the product's dtype."""
    V = dw.shape[0]
    for v in range(0, V, VOCAB_CHUNK):
        g, out = grad[:, v:min(v + VOCAB_CHUNK, V)].t(), dw[v:v + VOCAB_CHUNK]  # (chunk, r), (chunk, C)
        if not accumulate:
            out.copy_(g @ x)
        elif out.dtype == x.dtype:
            torch.addmm(out, g, x, out=out)
        else:
            out.add_(g @ x)


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype,
                grads: bool):
        # x (N, C), weight (V, C), targets (N,) -> mean cross-entropy of x @ weight.T, fp32 scalar;
        # grads: whether a backward pass will follow
        with torch.autocast(x.device.type, enabled=False):
            N, V = x.shape[0], weight.shape[0]
            xc, wc = x.to(dtype), padded_weight(weight, dtype)  # (N, C), (Vp, C)
            acc = torch.promote_types(dtype, torch.float32)  # fp32, or fp64 for gradcheck
            kept = KEPT_BYTES.get(x.device.type, KEPT_BYTES_ELSEWHERE)
            most = max(1, kept // (wc.element_size() * len(wc)))  # rows of buffer that fit
            block = -(-N // -(-N // most))  # rows per block: at most ``most``, the blocks even
            ctx.dtypes, ctx.blocked = (x.dtype, weight.dtype, V), N > most
            if not ctx.blocked:  # the gradient buffer is kept; backward multiplies it out
                grad, losses = losses_and_grad(xc, wc, targets, V, acc)
                ctx.save_for_backward(grad, xc, wc)
                return losses.mean()
            # row blocks: each block's buffer is multiplied out here, into dx and dw
            dx = torch.empty((N, xc.shape[1]), dtype=dtype, device=x.device) if grads else None
            dw = torch.empty((V, wc.shape[1]), dtype=weight.dtype, device=x.device) if grads else None
            losses = []
            for i in range(0, N, block):
                grad, block_losses = losses_and_grad(xc[i:i + block], wc, targets[i:i + block], V, acc)
                losses.append(block_losses)
                if grads:
                    torch.mm(grad, wc, out=dx[i:i + block])
                    weight_grad(dw, grad, xc[i:i + block], accumulate=i > 0)
                del grad
            ctx.save_for_backward(dx, dw)
            return torch.cat(losses).mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        x_dtype, w_dtype, V = ctx.dtypes
        dx = dw = None
        if ctx.blocked:  # the gradients of the summed losses, taken in forward
            dx_sum, dw_sum = ctx.saved_tensors  # (N, C), (V, C)
            scale = grad_loss / dx_sum.shape[0]  # d mean / d loss_i
            if ctx.needs_input_grad[0]:
                dx = (dx_sum * scale).to(x_dtype)  # as the kept path: the compute dtype's product
            if ctx.needs_input_grad[1]:
                dw = (dw_sum * scale).to(w_dtype)
            return dx, dw, None, None, None
        grad, xc, wc = ctx.saved_tensors  # (N, Vp) softmax - onehot (0 past V), (N, C), (Vp, C)
        scale = grad_loss / grad.shape[0]  # d mean / d loss_i
        if ctx.needs_input_grad[0]:
            dx = (grad @ wc).mul_(scale).to(x_dtype)  # (N, C)
        if ctx.needs_input_grad[1]:
            dw = torch.empty((V, wc.shape[1]), dtype=w_dtype, device=wc.device)  # (V, C)
            weight_grad(dw, grad, (xc * scale).to(xc.dtype), accumulate=False)
        return dx, dw, None, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """x (..., C) features, weight (V, C), targets (...) -> the mean cross-entropy of the logits
    x @ weight.T, as ``F.cross_entropy`` over fp32 logits rounded to the autocast dtype."""
    flat = x.reshape(-1, x.shape[-1])
    grads = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return LinearCrossEntropy.apply(flat, weight, targets.reshape(-1), compute_dtype(x), grads)
