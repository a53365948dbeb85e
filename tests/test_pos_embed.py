"""Fixed 2-D sin-cos position tables, checked against the official layout (reference section 1).

The official table is written here independently in numpy float64: the first D/2 channels encode the patch's
column index x, the second D/2 its row index y; each half is [sin(pos * w_i)] + [cos(pos * w_i)] with
w_i = 10000^(-i / (D/4)); patches are numbered row-major (index = y*W + x); the CLS slot is all zeros.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anymae.core.build.models import build_model
from anymae.core.config import resolve_model_config
from anymae.plugins import load_registry


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def _model(registry, *, img_size, patch_size=8, embed_dim=64, decoder_embed_dim=32):
    raw = {
        "tokenizer": {"img_size": img_size, "patch_size": patch_size},
        "embed_dim": embed_dim,
        "depth": 1,
        "num_heads": 4,
        "decoder_embed_dim": decoder_embed_dim,
        "decoder_depth": 1,
        "decoder_num_heads": 4,
    }
    return build_model(resolve_model_config(raw, registry), registry=registry)


def official_sincos_2d(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
    """(grid_h * grid_w, dim) float64, the released MAE layout (column first, row second)."""

    def half(pos: np.ndarray, width: int) -> np.ndarray:
        i = np.arange(width // 2, dtype=np.float64)
        w = 10000.0 ** (-i / (dim / 4))  # w_i = 10000^(-i/(D/4)), i = 0..D/4-1
        angles = np.outer(pos.astype(np.float64), w)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    index = np.arange(grid_h * grid_w)
    y, x = index // grid_w, index % grid_w  # row-major: index = y*W + x
    return np.concatenate([half(x, dim // 2), half(y, dim // 2)], axis=1)


def _with_cls(table: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros((1, table.shape[1])), table], axis=0)[None]


def _assert_table(actual: torch.Tensor, expected: np.ndarray) -> None:
    assert tuple(actual.shape) == expected.shape
    np.testing.assert_allclose(actual.detach().double().numpy(), expected, rtol=0, atol=1e-6)


def test_encoder_pos_embed_matches_official_2d_sincos(registry):
    model = _model(registry, img_size=32)
    _assert_table(model.encoder.pos_embed, _with_cls(official_sincos_2d(4, 4, 64)))


def test_decoder_pos_embed_matches_official_2d_sincos(registry):
    model = _model(registry, img_size=32)
    _assert_table(model.decoder.pos_embed, _with_cls(official_sincos_2d(4, 4, 32)))


def test_pos_embed_cls_slot_is_all_zeros(registry):
    model = _model(registry, img_size=32)
    assert torch.equal(model.encoder.pos_embed[0, 0], torch.zeros(64))
    assert torch.equal(model.decoder.pos_embed[0, 0], torch.zeros(32))


def test_pos_embed_rectangular_grid_is_row_major_with_column_first(registry):
    model = _model(registry, img_size=[32, 64])  # grid 4 rows x 8 columns
    assert model.tokenizer.grid == (4, 8)
    _assert_table(model.encoder.pos_embed, _with_cls(official_sincos_2d(4, 8, 64)))
    _assert_table(model.decoder.pos_embed, _with_cls(official_sincos_2d(4, 8, 32)))


def test_pos_embed_first_half_encodes_the_column_index(registry):
    # D = 8: w_0 = 1, w_1 = 10000^(-1/2) = 0.01. Token 6 of a 4 x 4 grid is row y = 1, column x = 2.
    model = _model(registry, img_size=32, embed_dim=8, decoder_embed_dim=8)
    row = model.encoder.pos_embed[0, 1 + 6].double()
    expected = [
        math.sin(2),
        math.sin(2 * 0.01),
        math.cos(2),
        math.cos(2 * 0.01),
        math.sin(1),
        math.sin(1 * 0.01),
        math.cos(1),
        math.cos(1 * 0.01),
    ]
    np.testing.assert_allclose(row.numpy(), expected, rtol=0, atol=1e-7)


def test_pos_embed_matches_released_vit_base_grid_and_widths(registry):
    # 224 px / patch 16 -> 14 x 14; widths 768 and 512, as in mae_pretrain_vit_base_full.pth.
    model = _model(registry, img_size=224, patch_size=16, embed_dim=768, decoder_embed_dim=512)
    _assert_table(model.encoder.pos_embed, _with_cls(official_sincos_2d(14, 14, 768)))
    _assert_table(model.decoder.pos_embed, _with_cls(official_sincos_2d(14, 14, 512)))


def test_pos_embed_is_fixed_not_a_trained_parameter(registry):
    model = _model(registry, img_size=32)
    names = {name for name, _ in model.named_parameters()}
    assert "encoder.pos_embed" not in names
    assert "decoder.pos_embed" not in names
    assert not model.encoder.pos_embed.requires_grad
    assert not model.decoder.pos_embed.requires_grad
