"""lmlab: Hydra + Lightning experiments on decoder-only transformer language models."""

__version__ = "0.1.0"
