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
