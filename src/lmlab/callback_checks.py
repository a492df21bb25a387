"""The ``callbacks.*`` values their classes refuse only once the data and model are built (a
``save_top_k`` below -1, a ``mode`` other than min or max, ``every_n_train_steps`` without
``save_last``: a Hydra instantiate error of several lines) or that Lightning refuses only at the
first validation (a ``monitor`` the module never logs, e.g. ``val_loss``: a traceback after the
first steps were trained). Checked with the rest of the config; Lightning is imported by then
(validate.py builds the module first)."""

from __future__ import annotations

from lmlab.errors import UserError, as_user_error, check_choice

MONITORED = ("val/loss", "val/ppl", "train/loss", None)  # what LanguageModule logs by validation time


def check_callbacks(callbacks: dict) -> None:
    """Raise a one-line UserError for the first callback whose values its class refuses, or a
    checkpoint callback monitoring a metric that is never logged."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    for name, spec in (callbacks or {}).items():
        if not isinstance(spec, dict) or "_target_" not in spec:
            continue
        try:
            callback = instantiate(spec)
        except Exception as err:
            cause = err.__cause__ or err
            raise UserError(f"callbacks.{name}: {str(cause).strip().splitlines()[0]}") from None
        if isinstance(callback, ModelCheckpoint):
            with as_user_error():
                check_choice(f"callbacks.{name}.monitor", callback.monitor, MONITORED)
