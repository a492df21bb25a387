"""The one form of a check of a config value by the code that owns it (a model component, an
optimizer, the schedule, the trainer's settings): ``require(ok, key, value, allowed)`` raises
``ValueError("<key>=<value>: must be <allowed>")``, which validate.py turns into a one-line
refusal before anything is built for real (it runs the constructors on the meta device)."""

from __future__ import annotations

import math
import numbers


def require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r}: must be {allowed}")


def is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x) -> bool:
    """A finite real number: YAML and the command line read ``inf`` and ``nan`` as floats, and
    ``temperature=inf`` sampled from nan probabilities, ``module.lr=inf`` trained to nan."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def positive_int_or_null(key: str, value) -> None:
    require(value is None or (is_int(value) and value >= 1), key, value, "an integer >= 1 or null")


def positive(key: str, value) -> None:
    require(is_number(value) and value > 0, key, value, "a number > 0")


def non_negative(key: str, value) -> None:
    require(is_number(value) and value >= 0, key, value, "a number >= 0")
