"""What a run prints: lmlab's own lines, not third-party advertisements or warnings from inside
libraries that the user cannot act on."""

from __future__ import annotations

import logging
import warnings

# Lightning's info lines that are not about the user's run: an advertisement for a hosted product
# and the accelerators the machine lacks.
_NOISE = ("💡 Tip:", "TPU available:", "HPU available:")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE)


def quiet_third_party() -> None:
    """Drop Lightning's advertisement and accelerator inventory, a deprecation warning raised
    inside Lightning's own code (lightning/pytorch/utilities/_pytree.py, about torch's LeafSpec),
    its caution about an IterableDataset with a length (lmlab's window streams are sized and
    split among workers on purpose), and its caution, on every resume from mid-epoch, that the
    loader is not resumable (lmlab's data modules resume it exactly)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # lmlab's window streams have a length and split work among loader workers themselves
    warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")
    # every mid-run resume: lmlab's data modules restart their loaders at the checkpoint's batch
    # themselves (TokenDataModule.state_dict), which Lightning cannot see in the loader
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")


def lightning_lines_once() -> None:
    """Each of Lightning's log lines once on the console, and in the run's log file. Importing the
    ``lightning`` package gives its logger a console handler of its own, and ``lightning.pytorch``
    and ``lightning.fabric`` each take one (and stop propagating) when imported before the root
    logger has handlers. Where Hydra has set the root's handlers (the console and the run's log
    file) by now, a single run printed every Lightning line twice, and a sweep's jobs printed them
    outside their log files (the duplicate-logging reports facebookresearch/hydra#1012, #2898).
    There Lightning's console handlers are dropped and its lines go to the root's."""
    if not logging.getLogger().handlers:
        return  # no Hydra (a script): Lightning's handlers are the ones that print its lines
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # its console handler, not a file handler
                logger.removeHandler(handler)
        logger.propagate = True
