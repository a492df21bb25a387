"""The ``trainer.*`` values Lightning would refuse only once the data and model are built (with
a five-line instantiate error), checked with the rest of the config before anything runs:
precision, accelerator (and whether this machine has it), devices, nodes, ``max_time``,
validation interval and gradient clipping. Lightning is not imported here."""

from __future__ import annotations

import re

import torch

from lmlab.checks import is_int, is_number, require
from lmlab.errors import UserError, as_user_error, check_choice

PRECISIONS = ("bf16-mixed", "bf16-true", "16-mixed", "16-true", "32-true", "64-true",
              "bf16", "16", "32", "64")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
TIME_UNITS = ("days", "hours", "minutes", "seconds")


def check_trainer(trainer: dict, here: bool = True) -> None:
    """Raise a one-line UserError for the first bad ``trainer.*`` value; ``here``: the run is on
    this machine, so its accelerator must be present (not so for a sweep submitted to SLURM)."""
    with as_user_error():
        check_choice("trainer.precision", str(trainer.get("precision", "32-true")), PRECISIONS)
        check_choice("trainer.accelerator", trainer.get("accelerator", "auto"), ACCELERATORS)
        check_devices(trainer.get("devices", "auto"))
        nodes = trainer.get("num_nodes", 1)
        require(is_int(nodes) and nodes >= 1, "trainer.num_nodes", nodes, "an integer >= 1")
        check_max_time(trainer.get("max_time"))
        check_val_interval(trainer.get("val_check_interval"), trainer.get("check_val_every_n_epoch", 1))
        clip = trainer.get("gradient_clip_val")
        require(clip is None or (is_number(clip) and clip >= 0), "trainer.gradient_clip_val", clip,
                "a number >= 0 or null (0 or null: no clipping)")
    if here:
        check_accelerator(trainer.get("accelerator", "auto"))


def check_accelerator(accelerator: str) -> None:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={accelerator}: torch sees no CUDA device here; use "
                        "trainer.accelerator=cpu or auto")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise UserError("trainer.accelerator=mps: torch sees no MPS device here; use cpu or auto")


def check_devices(devices) -> None:
    """Lightning's forms: a count >= 1 (-1: all), ``auto``, a list of indices, or ``"0,1"``."""
    ok = (devices == "auto" or (is_int(devices) and (devices >= 1 or devices == -1))
          or (isinstance(devices, (list, tuple)) and devices and all(is_int(d) and d >= 0 for d in devices))
          or (isinstance(devices, str) and re.fullmatch(r"\d+(,\d+)*,?", devices)))
    require(bool(ok), "trainer.devices", devices, "a count >= 1 (-1: all), auto, or a list of device "
            "indices like [0,1]")


def check_val_interval(interval, every_n_epochs) -> None:
    """A number of steps, or null; a fraction of an epoch only with ``check_val_every_n_epoch`` set
    (Lightning refuses one beside ``check_val_every_n_epoch: null``, lmlab's, once the model is built)."""
    fraction = "" if every_n_epochs is None else ", a fraction of an epoch in (0, 1]"
    require(interval is None or (is_int(interval) and interval >= 1)
            or (fraction != "" and isinstance(interval, float) and 0 < interval <= 1),
            "trainer.val_check_interval", interval, f"a number of steps >= 1{fraction}, or null")


def check_max_time(max_time) -> None:
    """null, ``"DD:HH:MM:SS"`` (two digits for hours, minutes and seconds, as Lightning's Timer
    requires) or a dict of days/hours/minutes/seconds, none negative."""
    ok = (max_time is None
          or (isinstance(max_time, str) and re.fullmatch(r"\d+:\d\d:\d\d:\d\d", max_time.strip()))
          or (isinstance(max_time, dict) and max_time and set(max_time) <= set(TIME_UNITS)
              and all(is_number(v) and v >= 0 for v in max_time.values())))
    require(bool(ok), "trainer.max_time", max_time, f"DD:HH:MM:SS (e.g. 00:00:08:45), a dict of "
            f"{'/'.join(TIME_UNITS)} (e.g. {{minutes:30}}), or null")
