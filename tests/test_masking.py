"""Random masking as in MAE (reference section 1): argsort of the noise, ``int(L * (1 - r))`` kept tokens,
a float mask with 0 = kept and 1 = removed in the original patch order.

The expected values are written here from the reference, never computed by anymae's own helpers.
"""

from __future__ import annotations

import pytest
import torch

from anymae.core.build.models import build_model
from anymae.core.config import ConfigError, resolve_model_config
from anymae.plugins import load_registry

SMALL = {
    "embed_dim": 64,
    "depth": 1,
    "num_heads": 4,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 4,
}


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def _model(registry, *, img_size: int = 32, patch_size: int = 8, **extra):
    raw = {"tokenizer": {"img_size": img_size, "patch_size": patch_size}, **SMALL, **extra}
    torch.manual_seed(0)
    return build_model(resolve_model_config(raw, registry), registry=registry).eval()


@pytest.fixture(scope="module")
def model196(registry):
    """224 px / patch 16: the paper's L = 196 grid, with a tiny width."""
    return _model(registry, img_size=224, patch_size=16)


@pytest.fixture(scope="module")
def model16(registry):
    return _model(registry)


def _expected_mask(noise: torch.Tensor, len_keep: int) -> torch.Tensor:
    """The reference: ids_shuffle = argsort(noise); the first len_keep are kept; mask in original order."""
    ids_shuffle = torch.argsort(noise, dim=1)
    mask = torch.ones_like(noise)
    for row in range(noise.shape[0]):
        mask[row, ids_shuffle[row, :len_keep]] = 0.0
    return mask


def test_masking_keeps_int_L_times_one_minus_ratio(model196):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        latent, mask, ids_restore = model196.forward_encoder(x, mask_ratio=0.75)
    assert latent.shape == (2, 1 + 49, 64)  # 49 of 196 kept, plus CLS
    assert mask.shape == (2, 196)
    assert ids_restore.shape == (2, 196)
    assert mask.sum(dim=1).tolist() == [147.0, 147.0]


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.6, 0.75, 0.9])
def test_masking_rounds_keep_count_down_like_the_reference(model196, ratio):
    x = torch.randn(1, 3, 224, 224)
    len_keep = int(196 * (1 - ratio))  # 0.9 -> int(19.6) = 19
    with torch.no_grad():
        latent, mask, _ = model196.forward_encoder(x, mask_ratio=ratio)
    assert latent.shape[1] == 1 + len_keep
    assert int(mask.sum()) == 196 - len_keep


def test_masking_mask_follows_argsort_of_noise(model196):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 224, 224)
    noise = torch.rand(3, 196)
    with torch.no_grad():
        _, _, mask = model196(x, noise=noise)
    assert mask.dtype == torch.float32
    assert torch.equal(mask, _expected_mask(noise, 49))


def test_masking_small_noise_is_kept(model16):
    x = torch.randn(1, 3, 32, 32)
    noise = torch.arange(16, 0, -1, dtype=torch.float32)[None]  # the last 4 tokens have the smallest noise
    with torch.no_grad():
        _, _, mask = model16(x, noise=noise)
    assert mask[0].tolist() == [1.0] * 12 + [0.0] * 4


def test_masking_ids_restore_is_inverse_of_ids_shuffle(model196):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 224, 224)
    noise = torch.rand(2, 196)
    with torch.no_grad():
        _, _, ids_restore = model196.forward_encoder(x, noise=noise)
    ids_shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(ids_restore, torch.argsort(ids_shuffle, dim=1))
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(196).expand(2, -1))


def test_masking_random_masks_differ_per_sample(model196):
    torch.manual_seed(3)
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        _, _, mask = model196(x)
    assert mask.sum(dim=1).tolist() == [147.0] * 4
    assert len({tuple(row.tolist()) for row in mask}) == 4


def test_masking_forced_bool_mask_is_returned_exactly(model16):
    torch.manual_seed(4)
    x = torch.randn(3, 3, 32, 32)
    forced = torch.zeros(3, 16, dtype=torch.bool)
    for row in range(3):
        forced[row, torch.randperm(16)[:10]] = True  # 10 removed, 6 kept in every row
    with torch.no_grad():
        latent, _, _ = model16.forward_encoder(x, mask=forced)
        _, pred, mask = model16(x, mask=forced)
    assert torch.equal(mask, forced.float())
    assert latent.shape == (3, 1 + 6, 64)
    assert pred.shape == (3, 16, 8 * 8 * 3)


def test_masking_forced_mask_with_unequal_counts_per_row_raises(model16):
    x = torch.randn(2, 3, 32, 32)
    forced = torch.zeros(2, 16, dtype=torch.bool)
    forced[0, :12] = True
    forced[1, :11] = True
    with pytest.raises(ValueError, match="same number"):
        model16(x, mask=forced)


def test_masking_forced_mask_of_wrong_shape_raises(model16):
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="shape"):
        model16(x, mask=torch.zeros(2, 15, dtype=torch.bool))


def test_masking_noise_of_wrong_shape_raises(model16):
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="shape"):
        model16(x, noise=torch.rand(2, 17))


def test_masking_noise_and_mask_together_raise(model16):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="either noise or mask, not both"):
        model16(x, noise=torch.rand(1, 16), mask=torch.zeros(1, 16, dtype=torch.bool))


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_masking_ratio_outside_zero_one_raises(model16, ratio):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="mask_ratio"):
        model16(x, mask_ratio=ratio)
    with pytest.raises(ValueError, match="mask_ratio"):
        model16(x, mask_ratio=ratio, noise=torch.rand(1, 16))


@pytest.mark.parametrize("ratio", [1.0, -0.25])
def test_masking_ratio_outside_zero_one_is_a_config_error(registry, ratio):
    raw = {"tokenizer": {"img_size": 32, "patch_size": 8}, **SMALL, "mask_ratio": ratio}
    with pytest.raises(ConfigError, match="mask_ratio"):
        resolve_model_config(raw, registry)


def test_masking_ratio_zero_keeps_every_token(model16):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        latent, mask, _ = model16.forward_encoder(x, mask_ratio=0.0)
    assert latent.shape == (2, 1 + 16, 64)
    assert not mask.any()
