"""The experiment trackers a run may log to (``train.loggers``), and the check made when a config is read: a
logger whose package is missing is refused there, naming the extra that installs it."""

from __future__ import annotations

import importlib.util

__all__ = ["LOGGERS", "check_loggers"]

# logger name -> (module it needs, extra that installs it)
LOGGERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "the base install"),
    "wandb": ("wandb", "anymae[wandb]"),
    "mlflow": ("mlflow", "anymae[mlflow]"),
}


def check_loggers(names: list[str], where: str = "train.loggers") -> None:
    """Refuse unknown loggers and loggers whose package is not installed, naming the extra (a ``ValueError``)."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"{where}: unknown logger(s) {unknown}; choose from {sorted(LOGGERS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: {names} names a logger twice")
    for name in names:
        module, extra = LOGGERS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"{where}: {name} needs the {module!r} package: pip install '{extra}'")
