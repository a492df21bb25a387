"""The LightningModule: objective, optimizer, schedule and metrics around a Transformer."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from torchmetrics import MeanMetric

from lmlab.model.moe import MoE
from lmlab.model.transformer import Transformer


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup from 0 to 1 over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LanguageModule(L.LightningModule):
    """Trains ``Transformer(model)`` on (B, T+1) token windows with cross-entropy plus the
    model's auxiliary losses (for example MoE load balancing), each logged by name."""

    def __init__(
        self,
        model: dict,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        optimizer: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()  # plain containers only, so load_from_checkpoint works
        self.model = Transformer(model)
        self.val_loss = MeanMetric()
        self._t0: float | None = None
        self._moe_counts: dict[int, torch.Tensor] = {}  # layer -> expert token counts this step

    def forward(self, idx: torch.Tensor):
        return self.model(idx)

    def _step(self, batch: torch.Tensor):
        return self.model.loss(batch[:, :-1], batch[:, 1:])  # inputs, targets: (B, T) each

    def training_step(self, batch, batch_idx):
        ce, out = self._step(batch)
        loss = ce + sum(out.losses.values())
        self.log("train/loss", ce, prog_bar=True)
        for name, value in out.losses.items():
            self.log(f"train/{name}", value)
        if out.stats and self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.log_dict({f"routing/{k}": v.float().mean() for k, v in out.stats.items()
                           if v.numel() == 1})
        for i, block in enumerate(self.model.blocks):  # for the MoE bias update after the step
            if f"layer{i}/counts" in out.stats:
                self._moe_counts[i] = self._moe_counts.get(i, 0) + out.stats[f"layer{i}/counts"]
        return {"loss": loss, "stats": out.stats}  # stats reach callbacks (RoutingMonitor)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # DeepSeek-V3 auxiliary-loss-free balancing: each MoE layer moves its selection bias by
        # the token counts of the step just taken (summed over ranks so every replica agrees).
        for i, counts in self._moe_counts.items():
            ffn = self.model.blocks[i].ffn
            if isinstance(ffn, MoE):
                ffn.update_bias(self.trainer.strategy.reduce(counts, reduce_op="sum"))
        self._moe_counts = {}

    def on_train_batch_start(self, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        now = time.perf_counter()
        dt, self._t0 = now - self._t0, now
        tokens = (batch.shape[1] - 1) * batch.shape[0] * self.trainer.world_size
        self.log("train/tokens_per_s", tokens / max(dt, 1e-9), prog_bar=True)

    def on_validation_epoch_start(self):
        self._t0 = None  # validation time is not training throughput

    def validation_step(self, batch, batch_idx):
        ce, _ = self._step(batch)
        self.val_loss.update(ce, weight=batch.shape[0])

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss), sync_dist=False)

    def configure_optimizers(self):
        """The optimizer of ``module/optimizer`` (a ``_target_`` in lmlab.optim; AdamW when
        none is given), linear warmup then cosine decay, stepped every optimizer step."""
        from hydra.utils import instantiate

        hp = self.hparams
        spec = dict(hp.optimizer or {"_target_": "lmlab.optim.adamw"})
        opt = instantiate(spec, model=self.model, lr=hp.lr, weight_decay=hp.weight_decay,
                          betas=tuple(hp.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, hp.warmup_steps, hp.max_steps, hp.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
