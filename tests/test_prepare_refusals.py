"""Sources and OUT_DIRs that prepare_data refuses in one line, before it deletes or writes anything:
it never deletes a file that a preparation did not write."""

from __future__ import annotations

import json
import re

import pytest

from lmlab.data.manifest import read_manifest
from lmlab.data.prepare import main as prepare_main, prepare

DOCS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (5 + i % 7)
        for i in range(40)]


def write_jsonl(path, docs=DOCS):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def tree(root):
    """Every file under ``root`` with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_source_in_out_dirs_train_is_refused_and_nothing_is_deleted(tmp_path, capsys):
    """The audit's case: the user's data in C/train and C/val, prepared into C (no manifest)."""
    corpus = tmp_path / "C"
    write_jsonl(corpus / "train" / "a.jsonl")
    write_jsonl(corpus / "val" / "v.jsonl", DOCS[:3])
    before = tree(corpus)
    assert prepare_main([str(corpus / "train"), str(corpus), "--val-fraction", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"lmlab: error: source '{corpus / 'train'}' lies in {corpus / 'train'}, which a "
                   f"preparation into {corpus} deletes; choose another OUT_DIR\n")
    assert tree(corpus) == before


@pytest.mark.parametrize("source, out, message", [
    ("C/val/v.jsonl", "C", "source '{source}' lies in {out}/val, which a preparation into {out} "
                           "deletes; choose another OUT_DIR"),
    ("C", "C", "OUT_DIR: {out} is the source; choose an OUT_DIR outside it"),
    ("C", "C/prepared", "OUT_DIR: {out} lies in the source {source}; choose an OUT_DIR outside"),
])
def test_a_source_that_is_or_holds_out_dir_or_lies_in_a_split_is_refused(tmp_path, source, out,
                                                                          message):
    write_jsonl(tmp_path / "C" / "val" / "v.jsonl")
    before = tree(tmp_path)
    source, out = str(tmp_path / source), str(tmp_path / out)
    with pytest.raises(ValueError, match="^" + re.escape(message.format(out=out, source=source))):
        prepare(source, out, val_fraction=0.3)
    assert tree(tmp_path) == before

