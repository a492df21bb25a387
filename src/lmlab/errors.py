"""User-facing errors: one line that names the bad value and what is allowed; the faults a run
stops on. Nothing here imports torch or Lightning, so a bad command line is refused quickly."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A bad value in the user's config or arguments, reported in one line before compute."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the run is stopped and recorded as failed."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the file it was to replace is intact."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by the signal ``signum`` (number) the way a Ctrl-C stops it; the run is
    recorded as interrupted by that signal (lmlab.interrupts, lmlab.multirun_ddp)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def as_user_error() -> Iterator[None]:
    """A ValueError raised inside (a component's, a schedule's, a check's own refusal), raised
    again as a one-line :class:`UserError` with the same message and no traceback chain."""
    try:
        yield
    except ValueError as err:
        raise UserError(str(err)) from None


def check_choice(key: str, value, choices: Iterable) -> None:
    """Raise ``ValueError("<key>: unknown <value>; valid choices: a, b")`` unless value is one.
    None and booleans are shown as YAML writes them: ``null``, ``true``, ``false``."""
    choices = tuple(choices)
    # a bool matches only a bool: 1 == True in Python, but compile=1 is not compile=true
    if not any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices):
        valid = ", ".join(_as_yaml(c, str) for c in choices)
        raise ValueError(f"{key}: unknown {_as_yaml(value, repr)}; valid choices: {valid}")


def _as_yaml(value, other) -> str:
    """null, true and false as YAML writes them; any other value as ``other(value)``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return other(value)


def exit_with(err: BaseException, prog: str = "lmlab", status: int = 2) -> None:
    """Print ``<prog>: error: <message>`` to stderr and exit with ``status``: 2 for a usage error
    (the default), 1 for a fault met while running (divergence, a failed save)."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    sys.exit(status)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1, else argparse's error ``'<text>': must be ...``."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return value


def positive_list(parse, what: str):
    """An argparse type: comma-separated values, each ``parse(text)`` and > 0, else argparse's
    error ``'<text>': must be <what>``."""
    def values(text: str) -> list:
        try:
            parsed = [parse(v) for v in text.split(",")]
        except ValueError:
            parsed = []
        if not parsed or any(v <= 0 for v in parsed):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return parsed
    return values
