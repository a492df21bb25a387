"""The configs travel with the package: a regular (non-editable) install composes `train`."""

import os
import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def test_wheel_ships_the_configs_and_its_entry_point_composes_train(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("lmlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lmlab/conf/train.yaml" in names and "lmlab/conf/model/position/rope.yaml" in names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy, not the source tree
    env.pop("LMLAB_CONF_DIR", None)
    where = subprocess.run([sys.executable, "-c", "import lmlab.config as c; print(c.conf_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(site / "lmlab" / "conf")
    proc = subprocess.run([str(site / "bin" / "lmlab-train"), "model/position=rope", "--cfg", "job", "--resolve"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "_target_: lmlab.model.position.RoPE" in proc.stdout
    assert "precision: 32-true" in proc.stdout or "precision: bf16-mixed" in proc.stdout  # a resolver
