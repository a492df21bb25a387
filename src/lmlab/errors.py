"""User-facing errors: one line that names the bad value and what is allowed."""

from __future__ import annotations

import sys
from collections.abc import Iterable


class UserError(Exception):
    """A bad value in the user's config or arguments, reported in one line before compute."""


def check_choice(key: str, value, choices: Iterable) -> None:
    """Raise ``ValueError("<key>: unknown <value>; valid choices: a, b")`` unless value is one.
    None and booleans are shown as YAML writes them: ``null``, ``true``, ``false``."""
    choices = tuple(choices)
    if value not in choices:
        yaml = {None: "null", True: "true", False: "false"}
        valid = ", ".join(yaml[c] if c is None or isinstance(c, bool) else str(c) for c in choices)
        raise ValueError(f"{key}: unknown {value!r}; valid choices: {valid}")


def exit_with(err: BaseException, prog: str = "lmlab", status: int = 2) -> None:
    """Print ``<prog>: error: <message>`` to stderr and exit with ``status``: 2 for a usage error
    (the default), 1 for a fault met while running (divergence, a failed save)."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    sys.exit(status)
