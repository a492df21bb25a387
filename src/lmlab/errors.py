"""User-facing errors: one line that names the bad value and what is allowed."""

from __future__ import annotations

import sys
from collections.abc import Iterable


class UserError(Exception):
    """A bad value in the user's config or arguments, reported in one line before compute."""


def check_choice(key: str, value, choices: Iterable) -> None:
    """Raise ``ValueError("<key>: unknown <value>; valid choices: a, b")`` unless value is one.
    None is shown as YAML's ``null``."""
    choices = tuple(choices)
    if value not in choices:
        valid = ", ".join("null" if c is None else str(c) for c in choices)
        raise ValueError(f"{key}: unknown {value!r}; valid choices: {valid}")


def exit_with(err: BaseException, prog: str = "lmlab") -> None:
    """Print ``<prog>: error: <message>`` to stderr and exit with status 2 (a usage error)."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    sys.exit(2)
