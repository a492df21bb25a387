"""The one way lmlab loads a checkpoint: ``torch.load(weights_only=True)``, with the stored model
config checked before anything is built from it."""

from __future__ import annotations

from pathlib import Path

import torch

from lmlab.errors import UserError


def check_targets(spec, where: str = "model") -> None:
    """Refuse a stored config whose ``_target_`` names anything but an lmlab class: a checkpoint
    must not be able to make us instantiate arbitrary Python."""
    if isinstance(spec, dict):
        target = spec.get("_target_")
        if target is not None and not str(target).startswith("lmlab."):
            raise UserError(f"checkpoint: {where}._target_={target!r} is not an lmlab class; refusing to build it")
        for key, value in spec.items():
            check_targets(value, f"{where}.{key}")
    elif isinstance(spec, (list, tuple)):
        for i, value in enumerate(spec):
            check_targets(value, f"{where}[{i}]")


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True``, with a one-line error for a
    missing, unreadable or non-lmlab file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ckpt_path: no such checkpoint: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, corrupt, or holding objects weights_only refuses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"ckpt_path: cannot read checkpoint {path}: {first}") from None
    model_cfg = (ckpt.get("hyper_parameters") or {}).get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model_cfg, dict):
        raise UserError(f"ckpt_path: {path} is not an lmlab checkpoint (no hyper_parameters.model)")
    check_targets(model_cfg)
    return ckpt


def load_module(path: str | Path, device: str = "auto"):
    """A trained LanguageModule in eval mode, from a Lightning checkpoint lmlab wrote."""
    from lmlab.module import LanguageModule

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ckpt = read_checkpoint(path, map_location=device)
    module = LanguageModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.to(device).eval()
