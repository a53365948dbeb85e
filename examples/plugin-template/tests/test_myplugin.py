"""The template's own tests: run with ``python -m pytest`` after ``pip install -e .``."""

from __future__ import annotations

import torch
from anymae_myplugin import block_masking

from anymae.core.model.masking import keep_count, shuffle_from_noise
from anymae.plugins import load_registry


def test_block_is_registered_through_the_entry_point():
    assert load_registry().masking_strategy("block") is block_masking


def test_block_masking_keeps_int_L_times_one_minus_ratio():
    noise, len_keep = block_masking(batch=3, grid=(8, 8), mask_ratio=0.75, device=torch.device("cpu"))
    assert noise.shape == (3, 64)
    assert len_keep == keep_count(64, 0.75) == 16


def test_block_masking_removes_one_contiguous_span_on_a_1d_grid():
    generator = torch.Generator().manual_seed(0)
    noise, len_keep = block_masking(
        batch=4, grid=(16,), mask_ratio=0.5, device=torch.device("cpu"), generator=generator
    )
    _, _, mask = shuffle_from_noise(noise, len_keep)  # (N, L), 1 = removed
    for row in mask:
        removed = row.nonzero().flatten()
        assert len(removed) == 8
        assert (removed.diff() == 1).all()
