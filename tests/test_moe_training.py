"""Mixture of experts in training: balancing spreads a skewed router, a MoE model trains through
the real CLI with its routing logged, and the MoE benchmark runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from lmlab.callbacks import RoutingMonitor
from lmlab.module import LanguageModule
from tests.conftest import FEW_TEST_WINDOWS, ROOT, model_cfg
from tests.test_moe import MOE_TINY


# ---- balancing changes the load; training end to end ---------------------------------------
def skewed_run(ffn_overrides: list[str], steps: int = 30):
    """Train a tiny MoE LM (sigmoid router scores, as DeepSeek-V3) whose routers start out
    sending most tokens to experts 0 and 1; return the module and its final (layers, experts) load
    on a fixed batch."""
    torch.manual_seed(0)
    cfg = model_cfg([*MOE_TINY, "model=tiny", "model.ffn.score=sigmoid", "model.ffn.aux_loss_coef=0", *ffn_overrides])
    module = LanguageModule(cfg, lr=3e-3, warmup_steps=1, max_steps=steps)
    v = torch.zeros(32)
    v[:4] = 1.0
    with torch.no_grad():
        for block in module.model.blocks:
            block.norm2.bias.copy_(v)  # every token's FFN input leans along v ...
            block.ffn.router.weight.normal_(0, 0.2)
            block.ffn.router.weight[:2] += 0.5 * v  # ... which experts 0 and 1 favour
    data = torch.randint(0, 256, (steps * 8, 17))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[RoutingMonitor(every_n_steps=0, heatmap=False)])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    with torch.no_grad():
        module.model(data[:32, :-1])
    return module, RoutingMonitor.load_matrix(module.model)


def test_balancing_spreads_a_skewed_router():
    spread, modules = {}, {}
    for name, overrides in [("none", []), ("aux", ["model.ffn.aux_loss_coef=0.1"]),
                            ("loss_free", ["model.ffn.bias_update_rate=0.02"])]:
        modules[name], load = skewed_run(overrides)
        spread[name] = (load.max(-1).values / load.mean(-1)).mean().item()  # 1 uniform, 4 worst
    assert spread["none"] > 3, spread  # without balancing the skew holds
    assert spread["aux"] < 2, spread
    assert spread["loss_free"] < 2, spread
    # the loss-free run balanced through its selection bias, moved after each optimizer step
    bias = modules["loss_free"].model.blocks[0].ffn.expert_bias
    assert bias[:2].max() < 0 < bias[2:].max()
    assert not modules["none"].model.blocks[0].ffn.expert_bias.any()


def test_train_cli_logs_moe_losses_and_routing(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "train.py", "model/ffn=moe", "model.n_layers=2", "model.d_model=32",
        "model.n_heads=2", "model.context_length=16", "data.batch_size=4", "trainer.max_steps=6", "module.warmup_steps=2",
        "trainer.val_check_interval=3", "data.val_windows=4", FEW_TEST_WINDOWS, "sample.max_new_tokens=5",
        "trainer.log_every_n_steps=2", "callbacks.routing.every_n_steps=3", "logger=csv",
        f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    aux = [float(r["train/moe_aux"]) for r in rows if r.get("train/moe_aux")]
    assert aux and all(0 < a < 1 for a in aux)  # 2 layers x 0.01 x ~1
    load = [[float(r[f"routing/layer1/expert{e}"]) for e in range(8)]
            for r in rows if r.get("routing/layer1/expert0")]
    assert len(load) == 2 and all(sum(row) == pytest.approx(1) for row in load)  # steps 3 and 6
    # each layer's routing statistics are the step's of their row (Lightning writes rows at steps
    # 1, 3, 5; they were logged at steps 0, 2, 4 and reached the rows a step late): the row's
    # weighted moe_aux is the sum of its layers' aux losses
    routed = [r for r in rows if r.get("routing/layer0/aux")]
    assert [int(r["step"]) for r in routed] == [1, 3, 5] and all(r.get("routing/layer0/entropy") for r in routed)
    for r in routed:
        layers = float(r["routing/layer0/aux"]) + float(r["routing/layer1/aux"])
        assert float(r["train/moe_aux"]) == pytest.approx(0.01 * layers, rel=1e-5)
    assert sorted(p.name for p in (run_dir / "routing").glob("*.png")) == [
        "load_step000003.png", "load_step000006.png"]
    assert "active per token" in (run_dir / "train.log").read_text()


def test_a_callback_set_to_null_is_turned_off(tmp_path):
    """`callbacks.routing=null`, Hydra's way to drop a config entry, reached Lightning as a None
    callback and the run crashed once the model was built."""
    import hydra

    from lmlab.training import make_trainer
    from tests.conftest import compose_cfg

    cfg = compose_cfg([f"paths.output_dir={tmp_path}", "trainer.accelerator=cpu", "callbacks.routing=null"])
    trainer, *_ = make_trainer(cfg, [hydra.utils.instantiate(cfg.logger.csv)])
    assert None not in trainer.callbacks and not any(isinstance(c, RoutingMonitor) for c in trainer.callbacks)


# ---- the benchmark runs ---------------------------------------------------------------------
def test_benchmark_moe_section_prints_ratios():
    cmd = [sys.executable, "scripts/benchmark.py", "--threads", "1", "moe", "--tokens", "256",
           "--d-model", "32", "--repeats", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "naive / moe =" in out.stdout and "moe / dense =" in out.stdout
