"""The manifest of a prepared corpus: written last and atomically, it marks the shards as complete.

``<dir>/manifest.json`` names the tokenizer, its vocabulary size, the token dtype, the number of
tokens of each split (``<dir>/train``, ``<dir>/val``: litdata chunks with their ``index.json``), the
source and the lmlab version. A directory without a valid manifest is never trained on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
FORMAT = 1


def split_tokens(split_dir: Path) -> int:
    """Tokens in a litdata split, from its index.json (each chunk's ``dim`` counts its tokens)."""
    index = json.loads((split_dir / "index.json").read_text())
    return sum(int(c["dim"] or 0) for c in index["chunks"])


def write_manifest(out_dir: Path, record: dict) -> dict:
    record = {"format": FORMAT, **record}
    tmp = out_dir / f".{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out_dir / MANIFEST)  # atomic: the manifest is there whole or not at all
    return record


def read_manifest(path: str | Path) -> dict:
    """The manifest of a prepared directory, checked against its shards; ValueError if the
    directory is not a complete preparation."""
    out_dir = Path(path).expanduser()
    file = out_dir / MANIFEST
    if not file.is_file():
        raise ValueError(f"data.path: {path} is not a prepared corpus (no {MANIFEST}; an interrupted "
                         f"preparation leaves none): run `python scripts/prepare_data.py SOURCE {path}`")
    manifest = json.loads(file.read_text())
    for split in SPLITS:
        try:
            found = split_tokens(out_dir / split)
        except (OSError, ValueError, KeyError):
            found = None
        if found != manifest["tokens"][split]:
            raise ValueError(f"data.path: the {split} shards of {path} hold {found} tokens, the "
                             f"manifest says {manifest['tokens'][split]}: prepare it again")
    return manifest


def check_tokenizer(manifest: dict, tokenizer: str, vocab_size: int, path: str) -> None:
    """Refuse shards made with another tokenizer or a vocabulary the model cannot embed."""
    if manifest["tokenizer"] != tokenizer:
        raise ValueError(f"data.tokenizer: {tokenizer!r} does not match {path}, prepared with "
                         f"{manifest['tokenizer']!r}; set data.tokenizer={manifest['tokenizer']}")
    if manifest["vocab_size"] > vocab_size:
        raise ValueError(f"model.vocab_size: {vocab_size} is smaller than the vocabulary of "
                         f"{path} ({manifest['vocab_size']}, {manifest['tokenizer']})")
