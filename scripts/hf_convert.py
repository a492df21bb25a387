"""Convert between Hugging Face checkpoints and lmlab checkpoints.

    python scripts/hf_convert.py import HF_DIR OUT.ckpt      # GPT-2 or Llama -> lmlab
    python scripts/hf_convert.py export IN.ckpt OUT_DIR [--layout gpt2|llama] [--tokenizer NAME|none]

HF_DIR is a directory with config.json and *.safetensors (as save_pretrained writes them, e.g. a
downloaded `gpt2` snapshot). OUT_DIR gets config.json, model.safetensors and, for GPT-2's BPE,
the tokenizer's files (tokenizer.json, tokenizer_config.json; written with transformers, where it
is installed): AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load it, and
so does transformers' pipeline("text-generation", model=OUT_DIR). The tokenizer is the run's
data.tokenizer (IN.ckpt's run directory, <run>/.hydra/config.yaml), else gpt2, lmlab's default,
for a GPT-2-sized vocabulary; --tokenizer names another or none. A checkpoint imported from Hugging
Face carries no tokenizer name: unless its vocabulary is GPT-2's, it is exported without tokenizer
files (copy the original's).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

GPT2_VOCAB = 50257


def main(argv: list[str] | None = None) -> int:
    from lmlab.errors import UserError
    from lmlab.interop import hf
    from lmlab.interop.hf_tokenizer import check_name

    parser = argparse.ArgumentParser(prog="hf_convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="Hugging Face directory -> lmlab checkpoint")
    imp.add_argument("src")
    imp.add_argument("dst")
    exp = sub.add_parser("export", help="lmlab checkpoint -> Hugging Face directory")
    exp.add_argument("src")
    exp.add_argument("dst")
    exp.add_argument("--layout", choices=hf.LAYOUTS, default=None, help="default: guessed from the components")
    exp.add_argument("--tokenizer", default=None,
                     help="a tiktoken encoding (files are written for gpt2) or none; default: the run's "
                          "data.tokenizer, else gpt2")
    args = parser.parse_args(argv)
    if (err := bad_destination(args.cmd, Path(args.dst))) is not None:  # before any weights are read
        print(f"hf_convert: error: {err}", file=sys.stderr)
        return 2
    log = logging.getLogger("lmlab")  # export's line about the tokenizer files, on stdout
    shown, level = logging.StreamHandler(sys.stdout), log.level
    shown.setFormatter(logging.Formatter("hf_convert: %(message)s"))
    log.addHandler(shown)
    log.setLevel(logging.INFO)
    try:
        if args.cmd == "import":
            model = hf.import_hf(args.src)
            hf.save_checkpoint(model, args.dst)
        else:
            if args.tokenizer is not None and args.tokenizer.lower() != "none":
                check_name(args.tokenizer)  # before the checkpoint is read
            model = hf.load_checkpoint(args.src)
            tokenizer = export_tokenizer(args.tokenizer, Path(args.src), model.cfg["vocab_size"])
            hf.export_hf(model, args.dst, layout=args.layout, tokenizer=tokenizer)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"hf_convert: error: {err}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(shown)
        log.setLevel(level)
    print(f"{args.cmd}ed {model.num_params():,} parameters to {args.dst}")
    return 0


def export_tokenizer(option: str | None, ckpt: Path, vocab_size: int) -> str | None:
    """The tokenizer an export writes: ``--tokenizer`` (none: None), else the data.tokenizer of
    the run that wrote ``ckpt`` (<run>/checkpoints/<name>.ckpt beside <run>/.hydra/config.yaml),
    else gpt2 (lmlab's default) where ``vocab_size`` is GPT-2's, padded by less than 64 (a
    checkpoint imported from Hugging Face has no run: a Llama 3's 128,256 tokens are not GPT-2's)."""
    if option is not None:
        return None if option.lower() == "none" else option
    from lmlab.run_record import run_config

    try:
        data = run_config(ckpt.resolve().parent.parent).get("data") or {}
    except FileNotFoundError:  # no run directory beside it (an imported checkpoint)
        data = {}
    if isinstance(data, dict) and data.get("tokenizer"):
        return str(data["tokenizer"])
    if GPT2_VOCAB <= vocab_size < GPT2_VOCAB + 64:
        return "gpt2"
    print(f"hf_convert: {ckpt} names no tokenizer (no run directory beside it) and its "
          f"vocab_size={vocab_size} is not GPT-2's; pass --tokenizer to write one")
    return None


def bad_destination(cmd: str, dst: Path) -> str | None:
    """Why ``dst`` cannot be written (import: a checkpoint file; export: a directory), or None."""
    if cmd == "import" and dst.is_dir():
        return f"{dst} is a directory; import writes a checkpoint file, e.g. {dst / 'model.ckpt'}"
    if cmd == "export" and dst.exists() and not dst.is_dir():
        return f"{dst} is a file; export writes a directory (config.json, model.safetensors)"
    return None


if __name__ == "__main__":
    sys.exit(main())
