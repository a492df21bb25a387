"""`python generate.py ckpt_path=... [overrides]`; `python generate.py --help` lists the options."""

from lmlab.cli import generate

if __name__ == "__main__":
    generate()
