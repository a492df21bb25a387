"""Checkpoint saving that never destroys the previous checkpoint.

Lightning's ``TorchCheckpointIO`` (lightning 2.6) serialises to memory, writes the bytes to a
temporary file in the system's temp directory and then ``shutil.move``s it over the target: where
the temp directory is another file system (a tmpfs ``/tmp``, a cluster's scratch space) that move
is a copy that first truncates the old checkpoint, so a full disk during it loses both. Here the
temporary file sits beside the target (same file system), is flushed to disk, and replaces the
target with one ``os.replace``: the old file stays whole until the new one is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the file it was to replace is intact."""


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as err:  # torch.save reports a failed write as a RuntimeError of its own
            tmp.unlink(missing_ok=True)
            cause = os_error(err)
            if cause is None:
                raise
            kept = (f"the previous {path.name} is intact" if path.exists()
                    else "the checkpoints saved before are intact")
            raise CheckpointSaveError(
                f"could not save checkpoint {path}: {cause.strerror or cause}; {kept}") from err


def os_error(err: BaseException | None) -> OSError | None:
    """The OSError in ``err``'s chain of causes and contexts, if any (e.g. ENOSPC, EFBIG)."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err
