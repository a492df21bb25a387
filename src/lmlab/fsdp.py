"""Fully sharded data parallel (FSDP) for lmlab models: each transformer Block is one FSDP unit.

``trainer=fsdp`` builds the strategy here. Lightning 2.6 refuses ``strategy="fsdp"`` with a CPU
accelerator by a check on the strategy's name and exact class (``"requires a GPU accelerator"``);
torch's FSDP itself trains on CPU over gloo when given ``device_id=cpu``, which Lightning does not
pass. ``CPUCapableFSDP`` is Lightning's FSDPStrategy under its own class that, on a CPU, wraps the
model with that device id before Lightning's own setup (which then finds it wrapped), so the same
strategy runs on CPUs (tests, debugging) and GPUs. A full checkpoint on CPU gathers without
``offload_to_cpu`` (Lightning sets it; on CPU-resident shards torch 2.13 then fails with
"setStorage: ... out of bounds for storage of size 0").
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, OptimStateKeyType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp import StateDictType

from lmlab.model.transformer import Block


class CPUCapableFSDP(FSDPStrategy):
    """Lightning's FSDPStrategy, also on a CPU accelerator (gloo)."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type != "cpu" or any(isinstance(m, FSDP) for m in model.modules()):
            return super()._setup_model(model)
        model = FSDP(module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                     sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs)
        policy = self.kwargs.pop("auto_wrap_policy", None)  # applied; Lightning would drop it
        try:
            return super()._setup_model(model)
        finally:
            if policy is not None:
                self.kwargs["auto_wrap_policy"] = policy  # for the next setup (validate, test)


    def _on_cpu_full(self) -> bool:
        return self.root_device.type == "cpu" and self._state_dict_type == "full"

    def _full_state_dict_on_cpu(self):
        return FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT,
                                    FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
                                    FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True))

    def lightning_module_state_dict(self) -> dict:
        if not self._on_cpu_full():
            return super().lightning_module_state_dict()
        with self._full_state_dict_on_cpu():
            return self.model.state_dict()

    def optimizer_state(self, optimizer) -> dict:
        if not self._on_cpu_full():
            return super().optimizer_state(optimizer)
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's own
        with self._full_state_dict_on_cpu():
            state = FSDP.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # the ordinary layout, keyed by parameter id
                state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
            return state


def fsdp_strategy(sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "full",
                  **kwargs) -> FSDPStrategy:
    """FSDP wrapping every Block; ``state_dict_type=full`` writes one ordinary checkpoint file
    (gathered on rank 0) that a single process loads; ``sharded`` writes a directory per step."""
    return CPUCapableFSDP(auto_wrap_policy={Block}, sharding_strategy=sharding_strategy,
                          state_dict_type=state_dict_type, **kwargs)
