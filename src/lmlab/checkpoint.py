"""The one way lmlab loads a checkpoint: ``torch.load(weights_only=True)``, with the stored model
config checked before anything is built from it."""

from __future__ import annotations

import pickle
import re
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


def why_unreadable(err: Exception) -> str:
    """torch.load's error, in a few words (its own messages run to paragraphs and suggest
    ``weights_only=False``, which is exactly what must not be done with an untrusted file)."""
    text = str(err)
    if isinstance(err, EOFError) or not text.strip():
        return "the file is empty or ends early"
    if "GLOBAL" in text:  # weights_only refused a pickled object
        what = re.search(r"GLOBAL (\S+)", text).group(1)
        return (f"it holds a pickled Python object ({what}), which weights_only=True loading "
                f"refuses; lmlab checkpoints hold tensors and plain values only")
    if "zip archive" in text or isinstance(err, pickle.UnpicklingError):
        detail = text.split(". ")[0] if "zip archive" in text else "not a PyTorch file"
        return f"the file is truncated or corrupt ({detail})"
    # a file that is not a zip archive is read as a legacy pickle, and random bytes fail there in
    # any of many ways (IndexError, ValueError, ...)
    return f"the file is truncated or corrupt ({type(err).__name__}: {text.strip().splitlines()[0]})"


# Classes renamed since checkpoints were written: the old name -> the class that does the same.
RENAMED = {"lmlab.model.position.Position": "lmlab.model.position.NoPosition"}  # NoPE, issue 9


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint's contents, loaded with ``weights_only=True``, with a one-line error for a
    missing, unreadable or non-lmlab file."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.ckpt"))
        hint = f"; it holds {', '.join(found)}" if found else ""
        if not found and (path / "config.json").is_file():  # as save_pretrained writes them
            hint = (f"; a Hugging Face checkpoint directory? convert it first: python "
                    f"scripts/hf_convert.py import {path} model.ckpt")
        raise UserError(f"ckpt_path: {path} is a directory, not a checkpoint file{hint}")
    if not path.is_file():
        raise UserError(f"ckpt_path: no such checkpoint: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, corrupt, or holding objects weights_only refuses
        raise UserError(f"ckpt_path: cannot read checkpoint {path}: {why_unreadable(err)}") from None
    model_cfg = (ckpt.get("hyper_parameters") or {}).get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model_cfg, dict):
        raise UserError(f"ckpt_path: {path} is not an lmlab checkpoint (no hyper_parameters.model)")
    check_targets(model_cfg)
    for spec in model_cfg.values():
        if isinstance(spec, dict) and spec.get("_target_") in RENAMED:
            spec["_target_"] = RENAMED[spec["_target_"]]
    return ckpt


def check_fits(module: torch.nn.Module, state_dict: dict) -> None:
    """Raise a one-line UserError naming the first key whose shape differs between a checkpoint's
    ``state_dict`` and ``module``, or the keys one has and the other lacks."""
    own = module.state_dict()
    for key, value in state_dict.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            raise UserError(f"checkpoint does not fit the model: {key} is {tuple(value.shape)} in the "
                            f"checkpoint, {tuple(own[key].shape)} in the model")
    missing = [k for k in own if k not in state_dict]
    extra = [k for k in state_dict if k not in own]
    if missing or extra:
        parts = ([f"the model's {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                  "missing from the checkpoint"] if missing else []) + (
                 [f"the checkpoint's {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''} "
                  "unknown to the model"] if extra else [])
        raise UserError(f"checkpoint does not fit the model: {'; '.join(parts)}")


def load_model(path: str | Path, device: str = "auto", compile: bool | None = None):
    """A trained Transformer in eval mode, from a checkpoint lmlab wrote; with ``compile`` true or
    false, its ``model.compile`` replaced (the weights are the same either way). Lightning is not
    imported: the checkpoint's weights are the LanguageModule's ``model.*`` and nothing else."""
    from lmlab.model.transformer import Transformer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ckpt = read_checkpoint(path, map_location=device)
    cfg = ckpt["hyper_parameters"]["model"]
    if compile is not None:
        cfg = {**cfg, "compile": compile}
    try:
        model = Transformer(cfg)
    except (ValueError, TypeError) as err:
        raise UserError(f"ckpt_path: {path}: its stored model config cannot be built: {err}") from None
    as_saved = torch.nn.ModuleDict({"model": model})  # keys as the checkpoint has them: model.*
    check_fits(as_saved, ckpt["state_dict"])
    as_saved.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()
