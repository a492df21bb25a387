"""Conversions between lmlab models and other libraries' checkpoints."""
