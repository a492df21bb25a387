"""`python evaluate.py ckpt_path=... [overrides]`; `python evaluate.py --help` lists the options."""

from lmlab.cli import evaluate

if __name__ == "__main__":
    evaluate()
