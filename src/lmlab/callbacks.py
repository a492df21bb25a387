"""Lightning callbacks."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar

from lmlab.errors import Diverged
from lmlab.model.transformer import Transformer


class StepsProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting optimizer steps. Lightning's counts batches, and for
    a run bounded by steps (``max_epochs: -1``, lmlab's default) takes the remaining steps as its
    total: under gradient accumulation it read "800/400" at the end of 400 steps of two batches.
    This one counts a step when its last batch ends, out of the epoch's steps (see
    ``total_train_batches``). It also titles such a run "Epoch 0", where Lightning's says
    "Epoch 0/-2". The usual metrics take short labels and read "loss: 5.274 tokens/s: 1,142 MFU: 62.0%" (Lightning's: "train/loss: 5.274
    train/tokens_per_s: 1141.852 train/mfu: 0.620"), which fits a terminal's width; the logs keep
    the metrics' names."""

    LABELS = {"train/loss": ("loss", "{:.3f}"), "train/tokens_per_s": ("tokens/s", "{:,.0f}"),
              "train/mfu": ("MFU", "{:.1%}"), "val/loss": ("val loss", "{:.3f}")}

    def get_metrics(self, trainer, pl_module) -> dict:
        shown = {}
        for name, value in super().get_metrics(trainer, pl_module).items():
            label, form = self.LABELS.get(name, (name, None))
            shown[label] = form.format(value) if form and isinstance(value, float) else value
        return shown

    @property
    def total_train_batches(self) -> int | float:  # steps, here
        """The epoch's steps, and in a run bounded by steps, those of them before ``max_steps``:
        counted from the epoch's start, as the bar is (Lightning's counted from the current step,
        so a run resumed at step 200 of 400 ended at "400/200")."""
        trainer = self.trainer
        if not math.isfinite(trainer.num_training_batches):
            return trainer.max_steps if trainer.max_steps > 0 else math.inf  # one endless epoch
        steps = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        if trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0:
            return min(steps, trainer.max_steps - trainer.current_epoch * steps)
        return steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        steps_done = (batch_idx + 1) // trainer.accumulate_grad_batches  # in this epoch
        super().on_train_batch_end(trainer, pl_module, outputs, batch, steps_done - 1)  # its count

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        return f"Epoch {current_epoch}".ljust(len(self.validation_description))


def progress_bars(enabled: bool) -> list[L.Callback]:
    """The progress bar for a run: StepsProgressBar where ``rich`` is installed (where Lightning
    would pick its rich bar); none when disabled or without rich (Lightning's tqdm bar)."""
    return [StepsProgressBar()] if enabled and importlib.util.find_spec("rich") else []


class StepLearningRateMonitor(LearningRateMonitor):
    """Lightning's LearningRateMonitor writes the rates before every batch of a step that is
    logged, so under gradient accumulation each step had a row per batch, all alike; this one
    writes them before a step's first batch only (an epoch always begins a step)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if batch_idx % trainer.accumulate_grad_batches == 0:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx, *args)


class DivergenceGuard(L.Callback):
    """Stops a run at the first non-finite training or validation loss, so a diverging arm of a
    sweep fails fast and is recorded as failed instead of training on NaNs until max_steps. The
    validation check runs before the checkpoint callback's (Lightning runs checkpoint callbacks
    last), so weights that already give NaN are never saved over the last good checkpoint."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss.detach()).all():
            raise Diverged(f"non-finite training loss ({float(loss):.4g}) at step {trainer.global_step}"
                           f"{last_saved(trainer)}")

    def on_validation_end(self, trainer, pl_module):
        loss = trainer.callback_metrics.get("val/loss")
        if not trainer.sanity_checking and loss is not None and not torch.isfinite(loss).all():
            raise Diverged(f"non-finite validation loss ({float(loss):.4g}) at step "
                           f"{trainer.global_step}{last_saved(trainer)}")


class ValidateLastStep(L.Callback):
    """lmlab validates (and so checkpoints) every ``val_check_interval`` steps; where
    ``max_steps`` is not a multiple of it, the last steps were trained but neither validated nor
    saved (``last.ckpt`` and the final figures were an earlier step's). Asking the loop to stop
    at the last step makes it validate there."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


def last_saved(trainer) -> str:
    """``; the last good checkpoint is <path>`` when one was saved, else an empty string."""
    path = getattr(trainer.checkpoint_callback, "last_model_path", "")
    return f"; the last good checkpoint is {path}" if path else ""


class RoutingMonitor(L.Callback):
    """Makes MoE routing visible. Every ``every_n_steps`` training steps (and when training ends)
    it reads the expert load fractions of the latest batch from the model's MoE layers and

    - logs each layer's per-expert fraction (``routing/layer{i}/expert{e}``) and its max/mean
      load ratio (``routing/layer{i}/imbalance``, 1 when uniform) to every logger;
    - draws a layer x expert heat map, saved as ``<run dir>/routing/load_step{step:06d}.png`` and sent
      to W&B as the image ``routing/load`` when a WandbLogger is present.

    Router entropy, dropped-token fraction and the aux and z losses per layer are logged by
    LanguageModule as ``routing/layer{i}/...``. With a dense model there are no MoE layers and
    this callback does nothing.
    """

    def __init__(self, every_n_steps: int = 100, heatmap: bool = True):
        self.every_n_steps = every_n_steps
        self.heatmap = heatmap
        self._last: tuple[int, torch.Tensor] | None = None  # (step, load) of the latest batch

    @staticmethod
    def load_matrix(model: Transformer) -> torch.Tensor | None:
        """(layers, experts) load fractions of the model's latest forward pass, or None for a
        dense model (or one not run yet)."""
        layers = model.moe_layers()
        if not layers or any(layer.routing is None for layer in layers):
            return None
        return torch.stack([layer.routing.load.float().cpu() for layer in layers])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        load = self.load_matrix(pl_module.model)
        if load is None:
            return
        step = trainer.global_step
        self._last = (step, load)
        if self.every_n_steps and step % self.every_n_steps == 0:
            self.report(trainer, step, load)

    def on_train_end(self, trainer, pl_module):
        if self._last is None:
            return
        step, load = self._last
        if not (self.every_n_steps and step % self.every_n_steps == 0):  # not reported yet
            self.report(trainer, step, load)

    def report(self, trainer, step: int, load: torch.Tensor) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {}
        for i, row in enumerate(load):
            metrics.update({f"routing/layer{i}/expert{e}": float(v) for e, v in enumerate(row)})
            metrics[f"routing/layer{i}/imbalance"] = float(row.max() / row.mean())
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if not self.heatmap:
            return
        path = Path(trainer.default_root_dir) / "routing" / f"load_step{step:06d}.png"
        save_heatmap(load, path, title=f"expert load, step {step}")
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_image(key="routing/load", images=[str(path)], step=step)


def save_heatmap(load: torch.Tensor, path: Path, title: str = "") -> Path:
    """A layer x expert heat map of token fractions, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers, n_experts = load.shape
    fig, ax = plt.subplots(figsize=(2.2 + 0.5 * n_experts, 1.2 + 0.4 * n_layers))
    im = ax.imshow(load.numpy(), cmap="viridis", vmin=0, aspect="auto")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_experts))
    ax.set_yticks(range(n_layers))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="fraction of assignments")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
