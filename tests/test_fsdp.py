"""FSDP on CPU (gloo): two processes train with each Block sharded, write one full checkpoint,
and a single process loads it and samples from it."""

import json

import pytest
import torch

from lmlab.checkpoint import load_model
from lmlab.sampling import sample_text
from tests.test_resume import logged
from tests.test_train_cli import FAST, run


@pytest.mark.slow
def test_fsdp_trains_on_cpu_and_a_single_process_samples_from_its_checkpoint(tmp_path):
    run("train.py", *FAST, "model.n_layers=2", "trainer=fsdp", "trainer.accelerator=cpu",
        "trainer.devices=2", "data.batch_size=2", f"hydra.run.dir={tmp_path / 'r'}",
        f"paths.cache_dir={tmp_path / 'cache'}", timeout=500)
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["world_size"] == 2 and record["steps"] == 6
    ckpt = tmp_path / "r" / "checkpoints" / "last.ckpt"
    model = load_model(ckpt, "cpu")  # weights_only, one process, no FSDP
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state["model.tok_emb.weight"].shape == (50257, 32)  # gathered, not flat shards
    assert {f"model.{k}": v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in state.items()}
    batch = torch.randint(0, 50257, (2, 17))
    with torch.no_grad():
        ce, _ = model.loss(batch[:, :-1], batch[:, 1:])
    assert torch.isfinite(ce)
    text = sample_text(model, "gpt2", "ROMEO:", max_new_tokens=5, temperature=0.0)
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")


@pytest.mark.slow
def test_fsdp_with_activation_checkpointing_logs_the_losses_of_plain_fsdp(tmp_path):
    """Each sharded Block recomputed in backward (model.activation_checkpointing=true): the same
    training losses step for step as without, so the gathered weights' gradients are the same."""
    losses = {}
    for name, extra in (("plain", []), ("recomputed", ["model.activation_checkpointing=true"])):
        run("train.py", *FAST, "model.n_layers=2", "trainer=fsdp", "trainer.accelerator=cpu",
            "trainer.devices=2", "data.batch_size=2", "trainer.log_every_n_steps=1",
            "sample.max_new_tokens=0", *extra, f"hydra.run.dir={tmp_path / name}",
            f"paths.cache_dir={tmp_path / 'cache'}", timeout=500)
        losses[name] = logged(tmp_path / name, "train/loss")
    assert sorted(losses["plain"]) == list(range(6))
    assert losses["recomputed"] == pytest.approx(losses["plain"], rel=1e-6)
