"""The LightningModule: objective, optimizer, schedule and metrics around a Transformer."""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics import MeanMetric

from lmlab.model.transformer import Transformer
from lmlab.resume import optimizer_stepped
from lmlab.schedule import ANCHOR_KEY, Schedule, resume_anchor


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
        extend: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()  # plain containers only, so load_from_checkpoint works
        self.model = Transformer(model)
        # the running mean cross-entropy of a validation or a test pass; its state is not
        # persistent (torchmetrics' default), so it is in no state_dict and no checkpoint
        self.held_out_ce = MeanMetric()
        self._anchor: tuple[int, float] | None = None  # set when a resumed run extends its length
        # the losses of an optimizer step's micro-batches so far (gradient accumulation): the
        # step logs their mean, not its last micro-batch's value (what Lightning writes)
        self._step_losses: dict[str, list[torch.Tensor]] = {}

    def forward(self, idx: torch.Tensor):
        return self.model(idx)

    def _step(self, batch: torch.Tensor):
        return self.model.loss(batch[:, :-1], batch[:, 1:])  # inputs, targets: (B, T) each

    def training_step(self, batch, batch_idx):
        ce, out = self._step(batch)
        loss = ce + sum(out.aux_losses.values())
        for name, value in {"loss": ce, **out.aux_losses}.items():
            self._step_losses.setdefault(name, []).append(value.detach())
        if optimizer_stepped(self.trainer):  # the step's last micro-batch
            means = {name: torch.stack(values).mean() for name, values in self._step_losses.items()}
            self._step_losses = {}
            # train/loss: also the mean over DDP ranks
            self.log("train/loss", means.pop("loss"), prog_bar=True, sync_dist=True)
            for name, value in means.items():
                self.log(f"train/{name}", value)
        # Lightning writes a step's logged values to the loggers where step + 1 is a multiple of
        # log_every_n_steps; a value logged at other steps reached them steps late, beside another
        # step's train/loss
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            for i, layer in enumerate(self.model.moe_layers()):
                self.log_dict({f"routing/layer{i}/{k}": v.float()
                               for k, v in layer.routing.scalars().items()})
        return loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # DeepSeek-V3 auxiliary-loss-free balancing: each MoE layer moves its selection bias by
        # its token counts of the step just taken, summed over ranks so every replica agrees.
        for layer in self.model.moe_layers():
            layer.update_bias(lambda counts: self.trainer.strategy.reduce(counts, reduce_op="sum"))

    def _accumulate(self, batch) -> None:
        """Add a held-out batch's cross-entropy to the running mean (validation or test)."""
        ce, _ = self._step(batch)
        self.held_out_ce.update(ce, weight=batch.shape[0])

    def _held_out_loss(self) -> torch.Tensor:
        loss = self.held_out_ce.compute()
        self.held_out_ce.reset()
        return loss

    def validation_step(self, batch, batch_idx):
        self._accumulate(batch)

    def _log_held_out(self, name: str, value: torch.Tensor, **kwargs) -> None:
        """A held-out figure, already the mean over every DDP rank (torchmetrics syncs when it
        computes): the max over the ranks' equal values passes it through unchanged (a mean
        could round it) and tells Lightning it needs no sync of its own."""
        self.log(name, value, sync_dist=True, reduce_fx="max", **kwargs)

    def on_validation_epoch_end(self):
        loss = self._held_out_loss()
        self._log_held_out("val/loss", loss, prog_bar=True)
        self._log_held_out("val/ppl", torch.exp(loss))

    def test_step(self, batch, batch_idx):
        self._accumulate(batch)

    def on_test_epoch_end(self):
        self._log_held_out("test/loss", self._held_out_loss())

    def configure_optimizers(self):
        """The optimizer of ``module/optimizer`` (a ``_target_`` in lmlab.optim; AdamW when
        none is given), linear warmup then cosine decay, stepped every optimizer step."""
        from lmlab.model.transformer import build

        hp = self.hparams
        spec = dict(hp.optimizer or {"_target_": "lmlab.optim.adamw"})
        opt = build(spec, model=self.model, lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas))
        schedule = Schedule(hp.warmup_steps, hp.max_steps, hp.min_lr_ratio, self._anchor)
        # a plain function, not the Schedule itself: LambdaLR saves a callable object's attributes
        # in checkpoints and a resume wrote them back over this run's plan (module.extend's
        # anchor and new length were replaced by the checkpoint's, and the LR stayed on the old cosine)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule(step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clipping by the global norm (``trainer.gradient_clip_val``), which is logged before
        clipping as ``train/grad_norm``. FSDP shards the gradients: its own clip_grad_norm_
        computes the global norm. Clipping by value is Lightning's."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not gradient_clip_val or gradient_clip_algorithm == "value":
            return self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if isinstance(self.trainer.model, FullyShardedDataParallel):
            norm = self.trainer.model.clip_grad_norm_(gradient_clip_val)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
        self.log("train/grad_norm", norm)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resuming: the planned length must match unless ``extend`` (see lmlab.schedule)."""
        self._anchor = resume_anchor(checkpoint, self.hparams)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._anchor is not None:
            checkpoint[ANCHOR_KEY] = list(self._anchor)
