from lmlab.model.transformer import ModelOutput, Transformer

__all__ = ["ModelOutput", "Transformer"]
