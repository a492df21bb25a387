"""The OUT_DIR of a preparation and its source: a source that a rebuild of OUT_DIR would delete
(one in ``OUT_DIR/train``, ``OUT_DIR/val`` or its manifest), or that is or holds OUT_DIR, is
refused before anything is touched.
"""

from __future__ import annotations

from pathlib import Path

from lmlab.data.manifest import MANIFEST, SPLITS


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
