"""Configs back to plain data, as saved with every run and in every checkpoint."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["config_to_dict"]


def config_to_dict(cfg: Any) -> Any:
    """A config (or any part of it) as plain data: dicts, lists, str, numbers, bools, None."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg
