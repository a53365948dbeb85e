"""What a training command returns: the run folder, its checkpoints and its headline figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClassifyResult"]


@dataclass
class ClassifyResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_acc1: float
    last_acc1: float
    last_acc5: float
    metrics: Path
    best_map: float | None = None  # multi-label data: mAP (%) of the best and the last epoch
    last_map: float | None = None
