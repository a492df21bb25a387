"""Convert between Hugging Face checkpoints and lmlab checkpoints.

    python scripts/hf_convert.py import HF_DIR OUT.ckpt      # GPT-2 or Llama -> lmlab
    python scripts/hf_convert.py export IN.ckpt OUT_DIR [--layout gpt2|llama]   # lmlab -> HF

HF_DIR is a directory with config.json and *.safetensors (as save_pretrained writes them, e.g. a
downloaded `gpt2` snapshot). OUT_DIR loads with transformers' AutoModelForCausalLM.from_pretrained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from lmlab.errors import UserError
    from lmlab.interop import hf

    parser = argparse.ArgumentParser(prog="hf_convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="Hugging Face directory -> lmlab checkpoint")
    imp.add_argument("src")
    imp.add_argument("dst")
    exp = sub.add_parser("export", help="lmlab checkpoint -> Hugging Face directory")
    exp.add_argument("src")
    exp.add_argument("dst")
    exp.add_argument("--layout", choices=hf.LAYOUTS, default=None, help="default: guessed from the components")
    args = parser.parse_args(argv)
    if (err := bad_destination(args.cmd, Path(args.dst))) is not None:  # before any weights are read
        print(f"hf_convert: error: {err}", file=sys.stderr)
        return 2
    try:
        if args.cmd == "import":
            model = hf.import_hf(args.src)
            hf.save_checkpoint(model, args.dst)
        else:
            model = hf.load_checkpoint(args.src)
            hf.export_hf(model, args.dst, layout=args.layout)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"hf_convert: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.cmd}ed {model.num_params():,} parameters to {args.dst}")
    return 0


def bad_destination(cmd: str, dst: Path) -> str | None:
    """Why ``dst`` cannot be written (import: a checkpoint file; export: a directory), or None."""
    if cmd == "import" and dst.is_dir():
        return f"{dst} is a directory; import writes a checkpoint file, e.g. {dst / 'model.ckpt'}"
    if cmd == "export" and dst.exists() and not dst.is_dir():
        return f"{dst} is a file; export writes a directory (config.json, model.safetensors)"
    return None


if __name__ == "__main__":
    sys.exit(main())
