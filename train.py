"""Train a language model: `python train.py [overrides]`, `python train.py --help` for the groups."""

from lmlab.cli import train

if __name__ == "__main__":
    train()
