"""Scoring a trained model on held-out text: ``python evaluate.py`` and the end of a training run.

Which text: ``split=auto`` scores the whole of your own files with ``data=text`` (every window of
``data.path``), and the test split (else validation) of a corpus with held-out documents.
"""

from __future__ import annotations

import math

from lmlab.errors import check_choice
from lmlab.extrapolation import extrapolation, format_table

SPLITS = ("auto", "train", "val", "test", "all")


def check_split(split: str) -> None:
    """Refuse a ``split`` that is not one of SPLITS (before any data or model is loaded)."""
    check_choice("split", split, SPLITS)


def resolve_split(split: str, datamodule) -> str:
    check_split(split)
    if split != "auto":
        return split
    if datamodule.source == "text":
        return "all"
    return "test" if datamodule.has_test_split else "val"


def score(model, datamodule, split: str, factors: list[float], max_windows: int | None) -> dict:
    """Loss and perplexity of ``model`` on ``split`` at its trained context, and at each of
    ``factors`` times it (length extrapolation)."""
    split = resolve_split(split, datamodule)
    tokens = datamodule.split_tokens(split)
    factors = list(factors or [1])
    if 1 not in factors:
        factors = [1, *factors]
    rows = extrapolation(model, tokens, factors, model.context_length, max_windows)
    at_trained = next(r for r in rows if r["factor"] == 1)
    if at_trained["loss"] is None:
        raise ValueError(f"the {split} split has {len(tokens)} tokens, fewer than one window of "
                         f"{model.context_length + 1}")
    return {"split": split, "tokens": int(len(tokens)), "context_length": model.context_length,
            "loss": at_trained["loss"], "ppl": math.exp(at_trained["loss"]),
            "windows": at_trained["windows"], "extrapolation": rows}


def summary(result: dict) -> str:
    text = (f"{result['split']} loss {result['loss']:.4f}, perplexity {result['ppl']:.2f} over "
            f"{result['windows']} windows of {result['context_length']} tokens "
            f"({result['tokens']:,} tokens in the split)")
    rows = result["extrapolation"]
    if len(rows) > 1:
        why = not_scored(result)
        text += f"\nlength extrapolation{f' (n/a: {why})' if why else ''}:\n"
        text += format_table(rows)
    return text


def not_scored(result: dict) -> str:
    """Why the n/a lengths of ``result`` were not scored (``extrapolation.extrapolation``): the
    text holds no window of that length, or its positions are past a learned table; '' if none."""
    why = {"the text holds no window of that length" if result["tokens"] <= r["length"] + 1
           else "positions past a learned table" for r in result["extrapolation"] if r["loss"] is None}
    return "; ".join(sorted(why))
