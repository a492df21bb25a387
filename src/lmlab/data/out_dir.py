"""The OUT_DIR of a preparation: what a rebuild may delete there, and the sources it must not touch.

A preparation writes ``OUT_DIR/manifest.json`` and, in ``OUT_DIR/train`` and ``OUT_DIR/val``, only
the shard writer's files (lmlab.data.shards): ``shard-<unit>-<k>.bin`` and, while one is being
written, ``.shard-<unit>-<k>.bin.tmp``. Format 1 (litdata chunks) wrote ``chunk-<r>-<k>.bin`` and
``index.json`` there instead. A rebuild deletes those files and nothing else: an OUT_DIR holding
anything other (the user's files, a subdirectory, a link, a manifest.json that lmlab did not
write) is refused, and so is a source that lies in what a rebuild deletes or that holds OUT_DIR.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lmlab.data.manifest import MANIFEST, SPLITS

SHARD_FILES = re.compile(r"shard-\d{5,}-\d{4,}\.bin|\.shard-\d{5,}-\d{4,}\.bin\.tmp")
FORMAT_1_FILES = re.compile(r"chunk-\d+-\d+\.bin|index\.json")  # beside a format-1 manifest only


def check_source_outside(source: str, out: Path, out_dir: str) -> None:
    """Refuse a local ``source`` that a preparation into ``out`` (resolved) would delete, or
    that is or holds ``out`` (it would read its own output)."""
    path = Path(source).expanduser()
    if not path.exists():
        return  # a hub dataset name
    path = path.resolve()
    if out.is_relative_to(path):
        where = "is the source" if out == path else f"lies in the source {source}"
        raise ValueError(f"OUT_DIR: {out_dir} {where}; choose an OUT_DIR outside it")
    for name in (*SPLITS, MANIFEST):
        if path.is_relative_to(out / name):
            raise ValueError(f"source {source!r} lies in {out / name}, which a preparation into "
                             f"{out_dir} deletes; choose another OUT_DIR")


def check_only_ours(out: Path, out_dir: str) -> None:
    """Refuse an ``out`` holding, where a rebuild deletes, anything that no preparation wrote."""
    entry = foreign_entry(out)
    if entry is not None:
        raise ValueError(f"OUT_DIR: {out_dir} holds {entry}, which no preparation writes; "
                         f"nothing was deleted: choose another OUT_DIR")


def clear(out: Path, out_dir: str) -> None:
    """Delete a previous preparation's manifest and shards (complete or killed), file by file,
    after checking that every one of them is ours (else refuse, deleting nothing)."""
    check_only_ours(out, out_dir)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on, the directory is not trusted
    for split in SPLITS:
        if (out / split).is_dir():
            for f in (out / split).iterdir():
                f.unlink()
            (out / split).rmdir()


def foreign_entry(out: Path) -> Path | None:
    """The first manifest, split directory or file in one that a rebuild of ``out`` would delete
    but no preparation wrote; None when there is none."""
    manifest = out / MANIFEST
    version = _manifest_format(manifest) if manifest.exists() or manifest.is_symlink() else 0
    if version is None:
        return manifest
    for split in SPLITS:
        directory = out / split
        if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
            return directory
        if directory.is_dir():
            for entry in sorted(directory.iterdir()):
                if not _written_by_us(entry, version):
                    return entry
    return None


def _written_by_us(entry: Path, manifest_format: int) -> bool:
    if entry.is_symlink() or not entry.is_file():
        return False
    return bool(SHARD_FILES.fullmatch(entry.name)
                or (manifest_format == 1 and FORMAT_1_FILES.fullmatch(entry.name)))


def _manifest_format(manifest: Path) -> int | None:
    """The format of a manifest lmlab wrote (every format has these keys), else None."""
    try:
        record = json.loads(manifest.read_text())
    except (OSError, ValueError):  # a directory, unreadable, not UTF-8 or not JSON
        return None
    if not (isinstance(record, dict) and {"format", "tokenizer", "lmlab_version"} <= record.keys()):
        return None
    return record["format"] if isinstance(record["format"], int) else None
