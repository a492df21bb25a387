"""Every run and sweep gets a directory of its own: two started in the same second used to share
outputs/runs/<date>_<time> (or a sweep's <date>/<time>) and overwrite each other's results."""

from __future__ import annotations

import datetime
import pickle

import pytest

from tests.conftest import compose_cfg


class FixedClock(datetime.datetime):
    """Hydra's ${now:...} at one instant: runs started in the same second."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 12, 5, 8, 30, 0)


@pytest.mark.parametrize("name, key, first", [
    ("train", "run", "outputs/runs/2026-12-05_08-30-00"),
    ("train", "sweep", "outputs/multirun/2026-12-05/08-30-00"),
    ("generate", "run", "outputs/generate/2026-12-05_08-30-00"),  # samples.txt
    ("evaluate", "run", "outputs/evaluate/2026-12-05_08-30-00"),  # eval.json
])
def test_runs_started_in_the_same_second_get_directories_of_their_own(tmp_path, monkeypatch, name,
                                                                      key, first):
    import hydra.core.utils

    monkeypatch.setattr(hydra.core.utils, "datetime", FixedClock)
    monkeypatch.setenv("LMLAB_ROOT", str(tmp_path))
    configs = [compose_cfg([f"paths.root_dir={tmp_path}"], name=name) for _ in range(3)]
    dirs = [str(cfg.hydra[key].dir) for cfg in configs]
    assert dirs == [f"{tmp_path}/{first}", f"{tmp_path}/{first}_2", f"{tmp_path}/{first}_3"]
    assert all((tmp_path / d).is_dir() for d in dirs)
    # each run reads its own again, and so does a sweep's job from the config pickled to it
    assert str(configs[0].hydra[key].dir) == dirs[0]
    assert str(pickle.loads(pickle.dumps(configs[1])).hydra[key].dir) == dirs[1]
