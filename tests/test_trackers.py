"""train.loggers: TensorBoard, W&B (offline) and MLflow (a file store) hold the same metrics, a resumed run
continues the same tracked run, and a logger whose package is missing is refused naming the extra."""

import copy
import json
import time

import pytest
from tracker_readers import mlflow_scalars, tensorboard_scalars, wandb_scalars

from anymae.core.train.trackers import check_loggers, open_trackers

pytest.importorskip("wandb", reason="the wandb extra (pip install 'anymae[wandb]') is not installed")
pytest.importorskip("mlflow", reason="the mlflow extra (pip install 'anymae[mlflow]') is not installed")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return tmp_path


def _log(trackers, steps):
    for step in steps:
        for tracker in trackers:
            tracker.scalars({"train/loss": 1.0 / step}, step)


def test_every_tracker_holds_the_same_metrics_and_a_resumed_run_continues_the_same_run(offline):
    run_dir = offline / "run"
    run_dir.mkdir()
    names = ["tensorboard", "wandb", "mlflow"]
    config = {"model": {"embed_dim": 8}, "train": {"epochs": 2}}
    trackers = open_trackers(names, run_dir, name="demo", config=config, resume_step=None)
    _log(trackers, [1, 2, 3])  # the run is killed after step 3; its last checkpoint is at step 2
    for tracker in trackers:
        tracker.close()
    ids = json.loads((run_dir / "trackers.json").read_text())
    trackers = open_trackers(names, run_dir, name="demo", config=config, resume_step=2)
    assert json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"] == ids["wandb"]["id"]
    _log(trackers, [3, 4])  # the resumed run logs step 3 again (the same value: resume is exact), then 4
    for tracker in trackers:
        tracker.close()
    expected = {1: 1.0, 2: 0.5, 3: round(1 / 3, 6), 4: 0.25}
    assert tensorboard_scalars(run_dir, "train/loss") == expected
    assert wandb_scalars(run_dir, "train/loss") == expected
    assert mlflow_scalars(ids["mlflow"]["id"], "train/loss") == expected


def test_a_logger_is_refused_when_unknown_or_its_package_is_missing(monkeypatch):
    with pytest.raises(ValueError, match=r"train.loggers: unknown logger\(s\) \['neptune'\]"):
        check_loggers(["tensorboard", "neptune"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    with pytest.raises(ValueError, match=r"pip install 'anymae\[mlflow\]'"):
        check_loggers(["mlflow"])


def test_a_run_logs_the_same_metrics_and_figures_to_every_tracker_and_a_resume_continues_them(
    offline, tiny_config_dict
):
    from anymae.core import pretrain
    from anymae.core.config import resolve_config

    raw = copy.deepcopy(tiny_config_dict)
    raw["train"].update(loggers=["tensorboard", "wandb", "mlflow"], epochs=3, save_every_epochs=1)
    raw["train"]["knn"] = False
    first = pretrain(resolve_config({**raw, "train": {**raw["train"], "epochs": 2}}), progress=False)
    ids = json.loads((first.run_dir / "trackers.json").read_text())
    time.sleep(1.1)  # W&B names an offline run's folder by the second it starts: a resume gets its own folder
    result = pretrain(resolve_config(raw), resume="auto", progress=False)  # epoch 3 in the same folder
    assert result.run_dir == first.run_dir
    assert json.loads((result.run_dir / "trackers.json").read_text())["mlflow"]["id"] == ids["mlflow"]["id"]
    board = tensorboard_scalars(result.run_dir, "train/loss")
    assert sorted(board) == [1, 2, 3, 4, 5, 6]  # 2 steps an epoch, 3 epochs
    assert wandb_scalars(result.run_dir, "train/loss") == board
    assert mlflow_scalars(ids["mlflow"]["id"], "train/loss") == board
    assert mlflow_scalars(ids["mlflow"]["id"], "heldout/loss") == tensorboard_scalars(result.run_dir, "heldout/loss")


def test_an_unknown_logger_is_refused_when_the_config_is_read(tiny_config_dict):
    from anymae.core.config import ConfigError, resolve_config

    raw = copy.deepcopy(tiny_config_dict)
    raw["train"]["loggers"] = ["tensorboard", "neptune"]
    with pytest.raises(ConfigError, match=r"loggers.*neptune"):
        resolve_config(raw)
