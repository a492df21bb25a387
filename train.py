"""Train a language model: `python train.py [overrides]`, `python train.py --help` for the groups."""

import sys

from lmlab.cli import CONF_DIR, train
from lmlab.overrides import check_argv

if __name__ == "__main__":
    if (err := check_argv(CONF_DIR, "train", sys.argv[1:])) is not None:
        sys.exit(f"lmlab: error: {err}")  # a misspelt key, before Hydra starts the run
    train()
