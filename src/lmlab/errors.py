"""Errors for bad user input: one line naming the config key, the bad value and what is valid."""

from __future__ import annotations


def check_choice(key: str, value, choices) -> None:
    """Raise ``ValueError("<key>: unknown <value>; valid choices: a, b")`` unless ``value`` is one
    of ``choices``. ``key`` is the full config key (``model.position.scaling``); None is shown as
    YAML's ``null``."""
    if value not in choices:
        valid = ", ".join("null" if c is None else str(c) for c in choices)
        raise ValueError(f"{key}: unknown {value!r}; valid choices: {valid}")
