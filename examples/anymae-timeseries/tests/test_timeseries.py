"""The plugin's own tests: run with ``python -m pytest`` after ``pip install -e .``."""

from __future__ import annotations

from anymae.testing import check_modality


def test_timeseries_satisfies_the_anymae_modality_contract():
    check_modality("timeseries", tokenizer={"channels": 3, "length": 64, "patch_size": 8})
