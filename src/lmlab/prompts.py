"""Generation's text arguments as typed on a command line: prompts and stop strings, checked
(each refusal a one-line :class:`UserError` naming the value) and with ``\\n``, ``\\t`` and
``\\\\`` decoded, which Hydra passes through as typed."""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmlab.errors import UserError

ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}  # what a backslash before these stands for


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` in text typed on a command line, decoded. Hydra passes
    ``prompt="ROMEO:\\n"`` through as a backslash and an n; prompts and stop strings mean a newline."""
    return re.sub(r"\\([nt\\])", lambda m: ESCAPES[m.group(1)], text)


def is_text(value) -> bool:
    """A prompt's value: a non-empty string, or a number (``prompt=1984`` reaches the config as
    an int), never a list, a mapping, a bool or null."""
    return (isinstance(value, (str, int, float)) and not isinstance(value, bool)
            and str(value) != "")


def prompt_text(key: str, prompt) -> str:
    """``prompt`` (set at ``key``) as the text it stands for, unescaped; anything but non-empty
    text is a one-line error."""
    if not is_text(prompt):
        raise UserError(f"{key}={prompt!r}: must be non-empty text "
                        f"(prompt='<|endoftext|>' samples unconditionally)")
    return unescape(str(prompt))


def prompt_texts(prompt, prompts) -> list[str]:
    """generate.py's prompts: ``prompts`` if set (one string alone counts as a list of one), else
    ``[prompt]``, each unescaped."""
    if prompts is None:
        return [prompt_text("prompt", prompt)]
    chosen = [prompts] if isinstance(prompts, str) else prompts
    is_list = isinstance(chosen, Sequence)
    if not is_list or not chosen or not all(is_text(p) for p in chosen):
        shown = list(chosen) if is_list else chosen
        raise UserError(f"prompts={shown!r}: each prompt must be non-empty text, e.g. "
                        f"'prompts=[\"ROMEO:\",\"JULIET:\"]' (prompts=null: the one prompt)")
    return [unescape(str(p)) for p in chosen]


def stop_strings(stop) -> list[str]:
    """generate.py's ``stop``: a list of non-empty strings (one string alone counts as a list of
    one), unescaped; an empty string would end every sample at once. ``'stop=["\\n\\n"]'`` ends
    a sample at a blank line."""
    if stop is None:
        return []
    strings = [stop] if isinstance(stop, str) else stop
    is_list = isinstance(strings, Sequence)
    if not is_list or not all(isinstance(x, str) and x for x in strings):
        shown = list(strings) if is_list else strings
        raise UserError(f"stop={shown!r}: must be a list of non-empty strings, e.g. 'stop=[\"\\n\\n\"]'")
    return [unescape(x) for x in strings]
