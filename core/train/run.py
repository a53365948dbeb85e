"""The run layer every training command shares: the run folder, resume lookup, checkpoint rotation, metrics
(JSON lines and TensorBoard), SIGTERM handling, RNG capture and the errors that end a run.

Nothing here knows what is trained; :mod:`anymae.core.train.trainer` drives a task through these pieces.
"""

from __future__ import annotations

import json
import random
import re
import signal
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anymae.core.train.trackers import Tracker, open_trackers

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "MetricsWriter",
    "NonFiniteLossError",
    "PreemptedError",
    "capture_rng",
    "list_checkpoints",
    "new_run_dir",
    "on_sigterm",
    "restore_rng",
    "resume_path",
    "rotate_checkpoints",
    "run_base",
    "seed_everything",
    "writable_dir",
]

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again", what a requeueing job script checks for


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN or infinite; the message names the step and the last good checkpoint."""


class PreemptedError(RuntimeError):
    """SIGTERM arrived: a checkpoint was written at the next step boundary; resume with ``--resume auto``."""

    def __init__(self, message: str, checkpoint: Path) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@contextmanager
def on_sigterm(flag: threading.Event) -> Iterator[None]:
    """SIGTERM sets ``flag`` (the loop checkpoints at the next step boundary and stops) instead of killing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_base(cfg: Any) -> Path:
    """runs/<name>: ``train.output_dir`` / (``train.run_name`` or the config's ``name``)."""
    return Path(cfg.train.output_dir) / (cfg.train.run_name or cfg.name)


def new_run_dir(cfg: Any) -> Path:
    """runs/<name>, or runs/<name>-2, -3, ... when that one already holds a run: nothing is overwritten."""
    base = run_base(cfg)
    run_dir, n = base, 1
    while run_dir.exists() and any(run_dir.iterdir()):
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return writable_dir(run_dir)


def writable_dir(run_dir: Path) -> Path:
    """``run_dir``, created; an OSError naming ``train.output_dir`` when it cannot be written to."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"train.output_dir: cannot write to {run_dir}: {exc.strerror or exc}") from None
    return run_dir


def list_checkpoints(run_dir: Path, pattern: str = "checkpoint-*.pt") -> list[Path]:
    """The run's complete checkpoints, oldest first (temporary files of interrupted writes are hidden)."""
    found = sorted(run_dir.glob(pattern), key=lambda c: (c.stat().st_mtime_ns, c.name))
    complete = []
    for path in found:
        if zipfile.is_zipfile(path):  # torch.save's zip ends with a central directory: truncation shows
            complete.append(path)
        else:
            warnings.warn(f"ignoring {path}: not a complete checkpoint file", RuntimeWarning, stacklevel=2)
    return complete


def capture_rng() -> dict[str, Any]:
    """The CPU generators of torch, python and numpy as plain tensors and lists (``weights_only`` loadable)."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": _plain(random.getstate()),
        "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_pos": int(numpy_state[2]),
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Set the generators back to a :func:`capture_rng` state."""
    torch.set_rng_state(rng["torch"])
    random.setstate(_tuples(rng["python"]))
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))


def resume_path(resume: str, cfg: Any, *, pattern: str) -> Path | None:
    """``resume`` itself, or for "auto" the newest complete checkpoint matching ``pattern`` in runs/<name> or its
    -2, -3, ... siblings (``cfg`` has ``name`` and ``train.output_dir`` / ``train.run_name``); None when "auto"
    finds none yet: the caller starts the run in :func:`run_base`, so one command serves the first start and
    every restart (a requeued job, ``torchrun --max-restarts``), as Lightning's ``ckpt_path="last"`` does."""
    if resume != "auto":
        return Path(resume)
    base = run_base(cfg)
    runs = [
        base,
        *(d for d in base.parent.glob(f"{base.name}-*") if re.fullmatch(r"\d+", d.name[len(base.name) + 1 :])),
    ]
    # checkpoint-best.pt is a result, not a position: it may be older than the run's last step.
    found = [c for d in runs if d.is_dir() for c in list_checkpoints(d, pattern) if c.name != "checkpoint-best.pt"]
    if not found:
        return None
    return max(found, key=lambda c: (c.stat().st_mtime_ns, c.name))


def rotate_checkpoints(run_dir: Path, *, keep: int, newest: Path) -> None:
    """Delete all but the newest ``keep`` numbered checkpoints (``checkpoint-NNNN.pt``, ``checkpoint-stepNNNNNNNN.pt``;
    ``keep`` 0: keep all); never the one just written, and never ``checkpoint-best.pt`` / ``checkpoint-last.pt``."""
    if keep <= 0 or not _NUMBERED.fullmatch(newest.name):
        return
    numbered = [c for c in list_checkpoints(run_dir) if _NUMBERED.fullmatch(c.name) and c != newest]
    for path in numbered[: max(len(numbered) - (keep - 1), 0)]:
        path.unlink(missing_ok=True)


_NUMBERED = re.compile(r"checkpoint-(?:step)?\d+\.pt")


class MetricsWriter:
    """One row per record in ``metrics.jsonl`` and, for its numbers, each tracker of ``train.loggers``
    (:mod:`anymae.core.train.trackers`; TensorBoard by default: ``tensorboard --logdir runs``). Only the main
    process writes; elsewhere every call does nothing.

    Tags: ``eval_*`` keys go to ``eval/*``, ``heldout_*`` and ``baseline_loss`` to ``heldout/*``, ``knn_*`` to
    ``knn/*``, the rest to ``train/*``; the x axis is the record's ``step`` (optimizer steps)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        resume_step: int | None = None,
        loggers: Sequence[str] = ("tensorboard",),
        config: dict[str, Any] | None = None,
    ) -> None:
        """``resume_step``: the run continues from a checkpoint taken at that step, so what was written after it
        (before the run was stopped) is dropped: every step appears once, in the file and in every tracker.
        ``config``: the resolved config, which each tracker records with the run."""
        self.path = run_dir / "metrics.jsonl"
        self.stream = None
        self.trackers: list[Tracker] = []
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            rows = [line for line in self.path.read_text().splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.stream = self.path.open("a")
        self.trackers = open_trackers(
            list(loggers), run_dir, name=run_dir.name, config=config or {}, resume_step=resume_step
        )

    def log(self, **record: Any) -> None:
        if self.stream is None:
            return
        self.stream.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self.stream.flush()
        step = int(record.get("step", 0))
        values = {
            _tag(key): float(value)
            for key, value in record.items()
            if key not in ("step", "epoch", "time") and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        for tracker in self.trackers:
            tracker.scalars(values, step)

    def image(self, tag: str, path: Path, *, step: int) -> None:
        """A figure file (PNG) as an image of every tracker at ``step``."""
        if not self.trackers:
            return
        from PIL import Image

        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))  # (H, W, 3) uint8
        for tracker in self.trackers:
            tracker.image(tag, pixels, step)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def _tag(key: str) -> str:
    for prefix, group in (("eval_", "eval"), ("heldout_", "heldout"), ("knn_", "knn")):
        if key.startswith(prefix):
            return f"{group}/{key[len(prefix) :]}"
    return "heldout/baseline_loss" if key == "baseline_loss" else f"train/{key}"


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
