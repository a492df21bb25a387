"""Optimizers, one per file of ``conf/module/optimizer/``; each ``_target_`` below builds one from
the model and the module's shared settings (lr, weight_decay, betas).

- ``adamw``: AdamW on every parameter, weight decay on matrices only; the fused single-pass
  implementation where PyTorch has one for the device.
- ``muon``: Muon (Jordan et al. 2024; ``torch.optim.Muon``'s rule, batched in ``muon.py``) on the
  hidden matrices - the 2-D weights of the linear layers inside the transformer blocks - and AdamW
  on everything else: embeddings, the LM head, norms and biases. Both are stepped as one
  optimizer, so Lightning's automatic optimization, gradient clipping, the LR schedule and
  checkpoints work unchanged. Its Newton-Schulz iteration runs in bf16 where that is native and in
  fp32 elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.errors import check_choice
from lmlab.checks import is_int, is_number, require
from lmlab.muon import Muon, closure_loss


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights of the linear layers inside the transformer blocks (not the embedding,
    the position table or the LM head, which sit outside the blocks)."""
    return [m.weight for m in model.blocks.modules() if isinstance(m, nn.Linear)]


def check_betas(betas) -> None:
    values = list(betas) if hasattr(betas, "__iter__") and not isinstance(betas, str) else []
    ok = len(values) == 2 and all(is_number(b) and 0 <= b < 1 for b in values)
    require(ok, "module.betas", betas, "two numbers in [0, 1), e.g. [0.9, 0.95]")


def _decay_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": rest, "weight_decay": 0.0}) if g["params"]]


def adamw(model: nn.Module, lr: float, weight_decay: float, betas, params=None,
          fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over ``params`` (default: all trainable parameters of ``model``). ``fused``: None
    picks PyTorch's fused kernel (one pass over each tensor instead of several)."""
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    check_betas(betas)
    require(fused in (None, True, False), "module.optimizer.fused", fused, "true, false or null (null: "
            "fused where the device has it)")
    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
    opt = torch.optim.AdamW(_decay_groups(params, weight_decay), lr=lr, betas=tuple(betas),
                            fused=fused)
    # A fused AdamW announces that it can unscale fp16 gradients itself, and Lightning then
    # refuses gradient clipping under mixed precision. With bf16 there is nothing to unscale, and
    # with fp16 the GradScaler unscales before clipping when the optimizer does not claim it.
    opt._step_supports_amp_scaling = False
    return opt


class Combined(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped as one. The parameter groups and the
    state are shared with the inner optimizers, so a scheduler's LR changes reach them and a
    checkpoint's state_dict round-trips through the usual Optimizer machinery."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        super().__init__([g for o in optimizers for g in o.param_groups], {})
        self._share()

    def _share(self):
        start = 0
        for o in self.optimizers:
            n = len(o.param_groups)
            o.param_groups = self.param_groups[start:start + n]
            o.state = self.state
            start += n

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for o in self.optimizers:
            o.step()
        return loss

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._share()  # load_state_dict replaces the group dicts and the state


NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
ADJUST_LR_FNS = ("match_rms_adamw", "original")  # torch.optim.Muon's


def native_ns_dtype(params: list[nn.Parameter]) -> str:
    """bfloat16 where bf16 matmuls are native (CUDA, CPUs with AVX512-BF16 or AMX), else float32."""
    from lmlab.hardware import cpu_has_native_bf16

    on_cpu = any(p.device.type == "cpu" for p in params)
    return "float32" if on_cpu and not cpu_has_native_bf16() else "bfloat16"


def muon(model: nn.Module, lr: float, weight_decay: float, betas, momentum: float = 0.95,
         ns_steps: int = 5, adjust_lr_fn: str = "match_rms_adamw", ns_dtype: str = "auto") -> Combined:
    """Muon on the hidden matrices, AdamW on the rest. With ``adjust_lr_fn: match_rms_adamw``
    (Liu et al. 2025) Muon's update has AdamW's RMS, so one ``lr`` serves both. ``ns_dtype``:
    auto | bfloat16 | float32, the Newton-Schulz iteration's precision (auto: see native_ns_dtype)."""
    hidden = [p for p in hidden_matrices(model) if p.requires_grad]
    ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if id(p) not in ids]
    check_choice("module.optimizer.ns_dtype", ns_dtype, ("auto", *NS_DTYPES))
    check_choice("module.optimizer.adjust_lr_fn", adjust_lr_fn, ADJUST_LR_FNS)
    require(is_number(momentum) and 0 <= momentum < 1, "module.optimizer.momentum", momentum, "in [0, 1)")
    require(is_int(ns_steps) and ns_steps >= 1, "module.optimizer.ns_steps", ns_steps, "an integer >= 1")
    dtype = NS_DTYPES[native_ns_dtype(hidden) if ns_dtype == "auto" else ns_dtype]
    opt_muon = Muon(hidden, ns_dtype=dtype, lr=lr, weight_decay=weight_decay, momentum=momentum,
                    ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
    return Combined([opt_muon, adamw(model, lr, weight_decay, betas, params=rest)])
