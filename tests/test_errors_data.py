"""Bad text data for ``data=text``: refused in one line when the data module is configured,
before any model is built. (Token files and shards: see the data tests.)"""

from __future__ import annotations

import os

import pytest

from lmlab.data.datamodule import TokenDataModule


@pytest.mark.parametrize("content, message", [
    (b"", "is empty; give a UTF-8 text file"),
    (os.urandom(4096), "is not UTF-8 text (byte "),
    (b"Hello\x00world" * 100, "is not UTF-8 text (byte 5: b'\\x00')"),
    ("caf\u00e9 ".encode("latin-1") * 100, "is not UTF-8 text (byte 3: b'\\xe9')"),
])
def test_empty_and_binary_files_are_refused(content, message, tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        TokenDataModule(source="text", path=str(path))
    assert str(err.value).startswith(f"data.path: {path} ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_utf8_text_is_accepted_even_when_a_character_straddles_the_sniffed_prefix(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(b"a" + "\u00e9".encode() * (1 << 16))  # a 2-byte character cut at 64 KiB
    TokenDataModule(source="text", path=str(path))


def test_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^data.path: no such file: {tmp_path / 'x.txt'}$"):
        TokenDataModule(source="text", path=str(tmp_path / "x.txt"))


def test_text_shorter_than_one_window_is_refused_before_the_model_is_built(tmp_path):
    from tests.test_train_cli import FAST, run

    path = tmp_path / "short.txt"
    path.write_text("To be, or not to be.\n" * 3)  # ~24 tokens: each split is under 17
    proc = run("train.py", *FAST, "data=text", f"data.path={path}", f"hydra.run.dir={tmp_path / 'r'}",
               f"paths.cache_dir={tmp_path / 'cache'}", check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith(f"lmlab: error: data.path={path}: the ") and " split has " in err
    assert "fewer than one window of model.context_length + 1 = 17" in err
    assert "parameters" not in proc.stdout + proc.stderr  # refused before the model was built
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_token_cache_cut_short_is_not_trusted_but_tokenized_again(tmp_path):
    from lmlab.data.datamodule import load_tokens, tokenize_to_file

    texts = ["Now is the winter of our discontent\n" * 50]
    path = tokenize_to_file(texts, "gpt2", tmp_path)
    whole = load_tokens(path).copy()
    with open(path, "r+b") as f:  # what a killed or full-disk write would leave
        f.truncate(path.stat().st_size // 2)
    assert tokenize_to_file(texts, "gpt2", tmp_path) == path
    assert (load_tokens(path) == whole).all() and len(load_tokens(path)) == len(whole)
    path.with_suffix(".json").unlink()  # a token file without its metadata: also rebuilt
    tokenize_to_file(texts, "gpt2", tmp_path)
    assert (load_tokens(path) == whole).all()
