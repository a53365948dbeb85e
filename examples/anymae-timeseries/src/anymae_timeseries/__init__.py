"""anymae-timeseries: an anymae modality plugin for multivariate time series (N, C, T).

Installed, it registers the modality ``timeseries`` through the ``anymae`` entry-point group; nothing in
anymae itself changes. ``demo_config()`` is the path of the bundled demo config::

    anymae pretrain "$(python -m anymae_timeseries)"
"""

from __future__ import annotations

from pathlib import Path

from .modality import (
    TimeSeriesDataConfig,
    TimeSeriesModality,
    TimeSeriesTokenizerConfig,
    anymae_register_modalities,
)
from .tokenizer import PatchTokenizer1d

__all__ = [
    "PatchTokenizer1d",
    "TimeSeriesDataConfig",
    "TimeSeriesModality",
    "TimeSeriesTokenizerConfig",
    "anymae_register_modalities",
    "demo_config",
]


def demo_config() -> Path:
    """The YAML config shipped with this package: a tiny model on the synthetic set, under 30 s on a CPU."""
    return Path(__file__).parent / "configs" / "timeseries_demo.yaml"
