"""The learning-rate schedule, and what a resumed run may change about it.

A run plans its length (``module.max_steps``, stored in the checkpoint's hyperparameters) and its
warmup + cosine schedule follows that plan. Resuming with another ``trainer.max_steps`` is refused,
since it would silently bend a schedule half followed, unless ``module.extend=true`` says so: then
the LR goes on from its value at the resume step and decays by a cosine to ``min_lr_ratio`` over
the new remaining steps (the *anchor*, kept in later checkpoints).
"""

from __future__ import annotations

import math

from lmlab.errors import UserError
from lmlab.checks import is_number, require

ANCHOR_KEY = "lmlab_schedule_anchor"  # [step, multiplier] in a checkpoint of an extended run


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup from 0 to 1 over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Schedule:
    """``LambdaLR``'s multiplier: warmup + cosine, or a cosine tail from an anchor onwards."""

    def __init__(self, warmup: int, total: int, min_ratio: float, anchor: tuple[int, float] | None = None):
        require(is_number(min_ratio) and 0 <= min_ratio <= 1, "module.min_lr_ratio", min_ratio,
                "in [0, 1] (the final LR as a share of module.lr)")
        self.warmup, self.total, self.min_ratio, self.anchor = warmup, total, min_ratio, anchor

    def __call__(self, step: int) -> float:
        if self.anchor is None or step < self.anchor[0]:
            return warmup_cosine(step, self.warmup, self.total, self.min_ratio)
        start, value = self.anchor
        progress = min(1.0, (step - start) / max(1, self.total - start))
        return self.min_ratio + (value - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def check_length(checkpoint: dict, hparams) -> None:
    """Refuse a resume that changes the planned length without ``module.extend``, or (with it)
    ends before the checkpoint's step (it trained nothing and was recorded as a completed run,
    with another run's checkpoint as its own). A resume at its plan's last step is allowed: it
    finishes the run's evaluation (a run killed, or requeued, after its last checkpoint)."""
    planned = checkpoint.get("hyper_parameters", {}).get("max_steps")
    step, steps = checkpoint.get("global_step", 0), hparams.get("max_steps")
    if planned is not None and planned != steps and not hparams.get("extend", False):
        raise UserError(f"trainer.max_steps: the checkpoint's run was planned for {planned} steps, "
                        f"not {steps}; resume with trainer.max_steps={planned}, or add "
                        f"module.extend=true to decay the LR from step {step} to the new end")
    if step > steps:
        raise UserError(f"trainer.max_steps={steps}: the checkpoint is at step {step} already, so "
                        f"there is nothing to train; to train on, use trainer.max_steps > {step}")


def resume_anchor(checkpoint: dict, hparams) -> tuple[int, float] | None:
    """The anchor of the schedule a resumed run follows (see check_length for what is refused)."""
    check_length(checkpoint, hparams)
    old = checkpoint.get("hyper_parameters", {})
    planned, step = old.get("max_steps"), checkpoint.get("global_step", 0)
    anchor = checkpoint.get(ANCHOR_KEY)
    anchor = (int(anchor[0]), float(anchor[1])) if anchor else None
    if planned is None or planned == hparams.max_steps:
        return anchor
    value = Schedule(old.get("warmup_steps", hparams.warmup_steps), planned,
                     old.get("min_lr_ratio", hparams.min_lr_ratio), anchor)(step)
    return step, value
