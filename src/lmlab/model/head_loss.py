"""The LM head and cross-entropy in one step, a chunk of tokens at a time.

The textbook way materialises the (N, vocab) logits, casts them to fp32, takes log-softmax, and
on the way back writes an (N, vocab) gradient - several passes over the largest tensor of a small
model. Here each chunk of ``chunk`` tokens has its logits computed, reduced to its loss, and turned
into its gradient in place while it is still in cache; the gradients for the hidden states and the
head weight are kept for the backward pass, which only scales them. The full logits never exist.

Precision: the head matmuls run in the autocast dtype when autocast is on (bf16), but the
log-sum-exp, the softmax gradient and the weight-gradient accumulation are fp32.
"""

from __future__ import annotations

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk):
        # h (N, C), weight (vocab, C), targets (N,) -> mean cross-entropy, a scalar
        dtype = _compute_dtype(h)
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)  # (vocab, C)
            x = h.to(dtype)
            n = x.shape[0]
            need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
            grad_h = torch.empty_like(x) if need_grad else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for s in range(0, n, chunk):
                xc, tc = x[s:s + chunk], targets[s:s + chunk]
                logits = (xc @ w.t()).float()  # (n_c, vocab)
                lse = torch.logsumexp(logits, dim=-1)  # (n_c,)
                total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
                if not need_grad:
                    continue
                # d(mean CE)/d logits = (softmax - one_hot) / n, computed in place
                probs = logits.sub_(lse[:, None]).exp_()
                probs.scatter_add_(1, tc[:, None], torch.full_like(lse[:, None], -1.0))
                g = probs.mul_(1.0 / n).to(dtype)  # (n_c, vocab)
                grad_h[s:s + chunk] = g @ w
                if grad_w is not None:
                    grad_w += (g.t() @ xc).float()
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w)
        ctx.h_dtype = h.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        dh = (grad_h * grad_out).to(ctx.h_dtype) if ctx.needs_input_grad[0] else None
        dw = grad_w * grad_out if grad_w is not None else None
        return dh, dw, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = 256) -> torch.Tensor:
    """Mean cross-entropy of ``h @ weight.T`` against ``targets``: h (..., C), weight (vocab, C),
    targets (...) -> scalar, equal to ``F.cross_entropy(F.linear(h, weight).flatten(0, -2).float(),
    targets.flatten())`` up to rounding."""
    return _LinearCrossEntropy.apply(h.reshape(-1, h.shape[-1]), weight, targets.reshape(-1), chunk)
