"""Experiment trackers of a run (``train.loggers``): TensorBoard (the default), Weights & Biases, MLflow.

Every tracker receives the same things: the numeric metrics of each record under the same tags as TensorBoard
(``train/loss``, ``eval/acc1``, ...), the figures the run draws, and the run's resolved config. A resumed run
continues the same tracked run: the W&B run id and the MLflow run id are kept in the run folder
(``trackers.json``), and steps a tracker already holds are not sent twice. W&B and MLflow are optional extras
(``pip install anymae[wandb]`` / ``anymae[mlflow]``); a logger whose package is missing is refused when the
config is read, naming the extra. Both work offline: ``WANDB_MODE=offline`` writes the run under the run folder
for a later ``wandb sync``; MLflow writes where ``MLFLOW_TRACKING_URI`` points (a file store or a database).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from anymae.core.config.loggers import LOGGERS, check_loggers

__all__ = ["LOGGERS", "Tracker", "check_loggers", "open_trackers"]

_STATE = "trackers.json"  # run ids and the last step each tracker holds


class Tracker(Protocol):
    """What the run's metrics writer calls; every call happens on the main process only."""

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        """``pixels``: (H, W, 3) uint8."""

    def close(self) -> None: ...


class TensorBoardTracker:
    def __init__(self, run_dir: Path, *, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1  # events from that step on are discarded
        self.board = SummaryWriter(log_dir=str(run_dir), purge_step=purge)

    def config(self, config: dict[str, Any]) -> None:
        self.board.add_text("config", "```yaml\n" + json.dumps(config, indent=2) + "\n```", 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.board.add_scalar(tag, value, step)
        self.board.flush()

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        self.board.add_image(tag, pixels, step, dataformats="HWC")
        self.board.flush()

    def close(self) -> None:
        self.board.close()


class WandbTracker:
    """One W&B run per anymae run folder; its id is kept so that a resumed run continues it."""

    def __init__(self, run_dir: Path, *, name: str, config: dict[str, Any], run_id: str | None) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "anymae"),
            name=name,
            dir=str(run_dir),
            config=config,
            id=run_id,
            resume="allow",
        )
        self.id = self.run.id

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        self.run.log({tag: self.wandb.Image(pixels)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """One MLflow run per anymae run folder (experiment ``MLFLOW_EXPERIMENT_NAME``, default "anymae")."""

    def __init__(self, run_dir: Path, *, name: str, config: dict[str, Any], run_id: str | None) -> None:
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient()
        if run_id is None:
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "anymae")
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            self.client.log_dict(run_id, config, "config.json")
            flat = _flatten(config)
            for key, value in list(flat.items())[:500]:  # MLflow keeps params short; the full config is the file
                self.client.log_param(run_id, key, str(value)[:500])
        self.id = run_id

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.client.log_metric(self.id, tag, value, step=step)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        self.client.log_image(self.id, pixels, key=tag, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.id)


class _Resumable:
    """A tracker that keeps the last step it received in ``trackers.json``, so that a resumed run does not send
    again the steps the tracker got before the run stopped (W&B refuses steps it already has; MLflow would keep
    both). Records of the same step within one process (a training row and a check at that step) all go."""

    def __init__(self, inner: Any, name: str, state: _State) -> None:
        self.inner, self.name, self.state = inner, name, state
        self.sent_before = state.last_step(name)  # what an earlier process of this run already sent

    def scalars(self, values: dict[str, float], step: int) -> None:
        if step <= self.sent_before:
            return
        self.inner.scalars(values, step)
        if step > self.state.last_step(self.name):
            self.state.update(self.name, step=step)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        if step > self.sent_before:
            self.inner.image(tag, pixels, step)

    def close(self) -> None:
        self.inner.close()


class _State:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / _STATE
        self.data: dict[str, dict[str, Any]] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run_id(self, name: str) -> str | None:
        return self.data.get(name, {}).get("id")

    def last_step(self, name: str) -> int:
        return int(self.data.get(name, {}).get("step", -1))

    def update(self, name: str, **values: Any) -> None:
        self.data.setdefault(name, {}).update(values)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)


def open_trackers(
    names: list[str], run_dir: Path, *, name: str, config: dict[str, Any], resume_step: int | None
) -> list[Tracker]:
    """The trackers ``names`` for the run folder ``run_dir`` (``resume_step``: the run continues from a
    checkpoint taken at that step)."""
    check_loggers(names)
    state = _State(run_dir)
    if resume_step is None:
        state.data = {}
    trackers: list[Tracker] = []
    for logger in names:
        if logger == "tensorboard":
            board = TensorBoardTracker(run_dir, resume_step=resume_step)
            if resume_step is None:
                board.config(config)
            trackers.append(board)
            continue
        kind = WandbTracker if logger == "wandb" else MlflowTracker
        tracker = kind(run_dir, name=name, config=config, run_id=state.run_id(logger))
        state.update(logger, id=tracker.id)
        trackers.append(_Resumable(tracker, logger, state))
    return trackers


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
