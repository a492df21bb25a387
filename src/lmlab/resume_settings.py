"""What ``train.py ckpt_path=...`` needs of its checkpoint, checked before anything is built for
real: a training checkpoint (one holding an optimizer state, not the weights alone that
``scripts/hf_convert.py import`` writes, which Lightning refused with a KeyError after the data
and model were built), and the optimization settings of the run it resumes.

Resuming restores the optimizer's state: its parameter groups carry the checkpoint's ``lr``,
``weight_decay``, ``betas`` and Muon's ``momentum``, ``ns_steps`` and ``adjust_lr_fn``, and the
LR scheduler its base learning rates. A new value of any of these on the command line was
silently replaced by the checkpoint's (while the run's config and record showed the new one), and
another ``module/optimizer`` crashed in Lightning after the model and data were built. The
schedule's ``warmup_steps`` and ``min_lr_ratio`` are this run's own, so a change would bend a
schedule half followed; ``module.extend=true`` asks for a new tail (lmlab.schedule), which may
have another floor. The length (``trainer.max_steps``) is lmlab.schedule's check.
"""

from __future__ import annotations

from lmlab.errors import UserError

RESTORED = ("lr", "weight_decay", "betas")  # module.* values the optimizer's state brings back
SCHEDULE = ("warmup_steps", "min_lr_ratio")  # module.* values only module.extend may change
COMPUTE_ONLY = ("ns_dtype", "fused")  # optimizer options that change how, not what, it computes
DEFAULT_OPTIMIZER = {"_target_": "lmlab.optim.adamw"}  # a module built without module/optimizer


def _plain(value):
    """Lists and tuples alike (a YAML list and a tuple of betas are one value)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _name(spec: dict) -> str:
    """``lmlab.optim.muon`` -> ``muon``: the module/optimizer option."""
    return str(spec.get("_target_", "")).rsplit(".", 1)[-1]


def check_resumable(ckpt: dict, path) -> None:
    """Refuse a checkpoint without an optimizer state: there is no run in it to resume."""
    if "optimizer_states" not in ckpt:
        raise UserError(f"ckpt_path: {path} holds a model's weights only (no optimizer state or "
                        f"step, as an imported checkpoint), so there is no run to resume; "
                        f"generate.py and evaluate.py read it")


def check_resume_settings(saved: dict, new: dict) -> None:
    """Raise a one-line UserError for the first optimization setting in the module's
    hyperparameters ``new`` that differs from the checkpoint's ``saved`` ones and that a resume
    would ignore or bend. Settings a checkpoint lacks (an older one) are not compared."""
    old_opt = dict(saved.get("optimizer") or DEFAULT_OPTIMIZER)
    new_opt = dict(new.get("optimizer") or DEFAULT_OPTIMIZER)
    if _name(old_opt) != _name(new_opt):
        raise UserError(f"module/optimizer={_name(new_opt)}: the checkpoint was trained with "
                        f"module/optimizer={_name(old_opt)}, whose state it holds; resume with "
                        f"module/optimizer={_name(old_opt)}")
    for key in sorted(set(old_opt) & set(new_opt) - {"_target_", *COMPUTE_ONLY}):
        _same(f"module.optimizer.{key}", old_opt[key], new_opt[key], "its optimizer state restores it")
    for key in RESTORED:
        if key in saved:
            _same(f"module.{key}", saved[key], new.get(key), "its optimizer state restores it")
    if not new.get("extend", False):
        for key in SCHEDULE:
            if key in saved:
                _same(f"module.{key}", saved[key], new.get(key), "the schedule half followed "
                      "would bend", "; or add module.extend=true for a new tail")


def _same(key: str, old, value, why: str, alternative: str = "") -> None:
    if _plain(old) != _plain(value):
        raise UserError(f"{key}={_plain(value)}: the checkpoint's run has {key}={_plain(old)} "
                        f"and {why}; resume with {key}={_plain(old)}{alternative}")
