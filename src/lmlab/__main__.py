"""``python -m lmlab [overrides]``: the same as ``python train.py [overrides]``."""

from lmlab.cli import train

if __name__ == "__main__":
    train()
