"""Video tokenizer, tube masking, VideoMAE targets and the modality contract, against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

from anymae.core.config import ConfigError, from_dict
from anymae.core.model.pos_embed import sincos_1d, sincos_2d
from anymae.modalities.video import TubeletTokenizer, VideoDataConfig, VideoTokenizerConfig
from anymae.modalities.video.masking import tube_masking
from anymae.modalities.video.targets import VideoMAEPixelTarget, VideoMAETarget
from anymae.modalities.video.tokenizer import sincos_3d, videomae_sinusoid
from anymae.testing import check_modality

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def _tokenizer(pos_embed: str = "videomae", **kw) -> TubeletTokenizer:
    args = dict(num_frames=4, img_size=(16, 24), patch_size=8, tubelet_size=2, in_chans=3, embed_dim=48)
    args.update(kw)
    return TubeletTokenizer(pos_embed=pos_embed, **args)


def _hf_patches(frames: torch.Tensor, t: int, p: int) -> torch.Tensor:
    """Hugging Face VideoMAE's own view/permute: frames (N, T, C, H, W) -> (N, L, t*p*p*C)."""
    n, time, c, h, w = frames.shape
    x = frames.view(n, time // t, t, c, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 5, 7, 3)
    return x.reshape(n, -1, t * p * p * c)


def test_patchify_matches_videomae_order_and_unpatchify_inverts():
    tok = _tokenizer()
    x = torch.randn(2, 3, 4, 16, 24)  # (N, C, T, H, W)
    patches = tok.patchify(x)
    assert tok.grid == (2, 2, 3) and patches.shape == (2, 12, 2 * 8 * 8 * 3)
    assert torch.equal(patches, _hf_patches(x.permute(0, 2, 1, 3, 4), 2, 8))
    assert torch.equal(tok.unpatchify(patches), x)
    # Hand check: token 0's first value is pixel (t0, y0, x0, c0); its 4th value is (t0, y0, x1, c0).
    assert patches[0, 0, 0] == x[0, 0, 0, 0, 0] and patches[0, 0, 3] == x[0, 0, 0, 0, 1]
    # Token 1 is the next column of the first time slice: spatial column 1 starts at x=8.
    assert patches[0, 1, 0] == x[0, 0, 0, 0, 8]


def test_tubelet_embedding_is_a_linear_over_the_tubelet():
    tok = _tokenizer()
    x = torch.randn(2, 3, 4, 16, 24)
    w = tok.proj.weight  # (D, C, t, p, p) -> a Linear over values ordered (t, p, q, c)
    linear = w.permute(0, 2, 3, 4, 1).reshape(48, -1)
    expected = tok.patchify(x) @ linear.T + tok.proj.bias
    assert torch.allclose(tok(x), expected, atol=1e-5)


def test_videomae_position_table_equals_reference_sinusoid():
    ours = videomae_sinusoid(1568, 384)
    theirs = get_sinusoid_encoding_table(1568, 384)[0]
    assert torch.equal(ours, theirs)
    # Interleaved, unlike MAE's [sin | cos] halves: channel 1 of position 3 is cos(3).
    assert math.isclose(ours[3, 1].item(), math.cos(3.0), rel_tol=1e-6)
    assert not torch.allclose(ours, sincos_1d(torch.arange(1568), 384))


def test_sincos_3d_is_time_half_then_mae_2d_half():
    table = sincos_3d((2, 3, 4), 32)
    assert table.shape == (24, 32)
    token = 1 * 12 + 2 * 4 + 3  # t=1, row=2, column=3
    assert torch.equal(table[token, :16], sincos_1d(torch.tensor([1]), 16)[0])
    assert torch.equal(table[token, 16:], sincos_2d((3, 4), 16)[2 * 4 + 3])
    with pytest.raises(ValueError, match="divisible by 8"):
        sincos_3d((2, 3, 4), 36)


def test_learned_positions_live_in_the_tokenizer_and_the_table_is_zero():
    tok = _tokenizer("learned")
    assert torch.equal(tok.position_table(48), torch.zeros(12, 48))
    x = torch.randn(1, 3, 4, 16, 24)
    tok(x).sum().backward()
    assert tok.pos_embed_spatial.grad.shape == (1, 6, 48) and tok.pos_embed_temporal.grad.shape == (1, 2, 48)
    # The spatial table is shared by both time slices; the temporal one by the 6 positions of a slice.
    diff = tok(x) - tok.proj(x).flatten(2).transpose(1, 2)
    assert torch.allclose(diff[0, 7], tok.pos_embed_temporal[0, 1] + tok.pos_embed_spatial[0, 1], atol=1e-6)


def test_repeated_samples_fold_into_the_batch():
    tok = _tokenizer()
    x = torch.randn(2, 3, 3, 4, 16, 24)  # (N, S, C, T, H, W)
    assert tok(x).shape == (6, 12, 48)
    assert torch.equal(tok.patchify(x), tok.patchify(x.flatten(0, 1)))
    with pytest.raises(ValueError, match=r"expected clips \(N, 3, 4, 16, 24\)"):
        tok(torch.randn(2, 3, 4, 16, 16))


def test_tube_masking_shares_one_spatial_mask_with_videomae_count():
    generator = torch.Generator().manual_seed(0)
    noise, len_keep = tube_masking(
        batch=5, grid=(8, 14, 14), mask_ratio=0.9, device=torch.device("cpu"), generator=generator
    )
    assert len_keep == 8 * (196 - 176)  # VideoMAE: int(0.9 * 196) = 176 removed per slice
    keep = torch.zeros_like(noise, dtype=torch.bool)
    keep.scatter_(1, torch.argsort(noise, dim=1, stable=True)[:, :len_keep], True)
    slices = keep.view(5, 8, 196)
    assert (slices == slices[:, :1]).all()  # the same spatial positions in every time slice
    assert (slices[:, 0].sum(1) == 20).all()
    assert not torch.equal(slices[0, 0], slices[1, 0])  # per sample


def test_check_modality_contract_for_every_position_table_and_videomae_parts():
    tokenizer = {"num_frames": 4, "img_size": 32, "patch_size": 8, "tubelet_size": 2}
    check_modality("video", tokenizer=tokenizer)
    check_modality("video", tokenizer={**tokenizer, "pos_embed": "sincos_3d"})
    check_modality(
        "video",
        tokenizer={**tokenizer, "pos_embed": "learned"},
        model={"decoder": "videomae", "decoder_options": {"learned_pos": True}},
    )
    check_modality(
        "video",
        tokenizer=tokenizer,
        model={
            "masking": "tube",
            "cls_token": False,
            "target": "videomae",
            "decoder": "videomae",
            "pred_masked_only": True,
        },
    )


def _videomae_reference_target(x: torch.Tensor, t: int, p: int) -> torch.Tensor:
    """VideoMAE's engine_for_pretraining, written from the reference formula: unnormalize, tubelets,
    per-channel (x - mean) / (unbiased std + 1e-6), flatten (t p q c)."""
    frames = x.permute(0, 2, 1, 3, 4) * STD.view(1, 1, 3, 1, 1) + MEAN.view(1, 1, 3, 1, 1)  # (N, T, C, H, W)
    patches = _hf_patches(frames, t, p).unflatten(-1, (-1, 3))  # (N, L, t*p*p, C)
    norm = (patches - patches.mean(dim=-2, keepdim=True)) / (
        patches.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6
    )
    return norm.flatten(-2)


def test_videomae_target_matches_reference_and_to_pixels_inverts_it():
    tok = _tokenizer()
    x = torch.randn(2, 3, 4, 16, 24, dtype=torch.float64)
    target = VideoMAETarget()
    ours = target(tok.patchify(x), tokenizer=tok)
    assert torch.allclose(ours, _videomae_reference_target(x, 2, 8).to(ours.dtype), atol=1e-10)
    back = target.to_pixels(ours, tok.patchify(x), tokenizer=tok)
    assert torch.allclose(back, tok.patchify(x), atol=1e-9)
    # Per channel, not per tubelet: each channel of each tubelet has mean 0 in target space.
    per_channel = ours.unflatten(-1, (-1, 3)).mean(dim=-2)
    assert per_channel.abs().max() < 1e-9


def test_videomae_pixel_target_is_the_unnormalized_clip():
    tok = _tokenizer()
    x = torch.randn(1, 3, 4, 16, 24)
    target = VideoMAEPixelTarget()
    pixels = target(tok.patchify(x), tokenizer=tok)
    expected = tok.patchify(x * STD.view(1, 3, 1, 1, 1) + MEAN.view(1, 3, 1, 1, 1))
    assert torch.allclose(pixels, expected, atol=1e-6)
    assert torch.allclose(target.to_pixels(pixels, tok.patchify(x), tokenizer=tok), tok.patchify(x), atol=1e-5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"img_size": 30}, r"30x30 \(img_size\) are not divisible by patch 16 \(patch_size\)"),
        ({"num_frames": 5}, r"num_frames 5 is not divisible by tubelet 2 \(tubelet_size\)"),
        ({"pos_embed": "rope"}, "pos_embed"),
    ],
)
def test_tokenizer_config_names_the_bad_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(VideoTokenizerConfig, raw, "model.tokenizer")


def test_data_config_validates_values():
    with pytest.raises(ConfigError, match="sampling_rate must be at least 1"):
        from_dict(VideoDataConfig, {"sampling_rate": 0}, "data")
    with pytest.raises(ConfigError, match="scales"):
        from_dict(VideoDataConfig, {"scales": [1.5]}, "data")
    assert from_dict(VideoDataConfig, {"scales": [1, 0.5]}, "data").scales == (1.0, 0.5)
    assert np.isclose(VideoDataConfig().mean[0], 0.485)
