"""Where the configs live and the resolvers they use; every entry point calls these explicitly."""

from __future__ import annotations

import math
import os
from pathlib import Path

from omegaconf import OmegaConf

from lmlab.hardware import fast_precision
from lmlab.run_dirs import claim_dir


def conf_dir() -> str:
    """The ``conf/`` directory: ``$LMLAB_CONF_DIR`` if set, else the copy inside the installed
    package (a wheel ships it as ``lmlab/conf``), else the source checkout's top-level ``conf/``
    (an editable install)."""
    if env := os.environ.get("LMLAB_CONF_DIR"):
        return str(Path(env).resolve())
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "conf")


def multiply(*factors: int | float) -> int | float:
    """``${mul:a,b,...}``: the product of numbers, e.g. steps x batch size x accumulation."""
    for f in factors:
        if isinstance(f, bool) or not isinstance(f, (int, float)):
            raise ValueError(f"mul: expects numbers, got {f!r}")
    return math.prod(factors)


RESOLVERS = {"fast_precision": fast_precision, "mul": multiply}
CACHED_RESOLVERS = {"claim_dir": claim_dir}  # one value per config: a run's directory is claimed once


def register_resolvers() -> None:
    """Register lmlab's config resolvers (idempotent)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    for name, fn in CACHED_RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
