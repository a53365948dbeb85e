"""Reconstruction figures say how they drew the removed patches (issue 22): a caption for models whose drawing
uses each true patch's statistics, and a raw-statistics mode that never reads the removed patches' values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from anymae.core.build.models import build_model
from anymae.core.cli import main
from anymae.core.config import from_dict, resolve_model_config
from anymae.core.model.figures import (
    RAW_STATS_CAPTION,
    TRUE_STATS_CAPTION,
    figure_prediction,
    grey_out,
    removed_values,
    render_figure,
)
from anymae.core.model.masking import sample_mask
from anymae.plugins import get_registry

COMMON = {"embed_dim": 16, "depth": 1, "num_heads": 2, "decoder_embed_dim": 8, "decoder_depth": 1}
MODELS = {
    "image": ({"img_size": 32, "patch_size": 8, "in_chans": 3}, {"norm_pix_loss": True}, (3, 32, 32)),
    "video": (
        {"num_frames": 4, "img_size": 16, "patch_size": 8, "tubelet_size": 2},
        {"masking": "tube", "target": "videomae", "pred_masked_only": True, "cls_token": False},
        (3, 4, 16, 16),
    ),
    "audio": ({"target_length": 64, "num_mel_bins": 32, "patch_size": 16}, {"norm_pix_loss": True}, (1, 64, 32)),
}


def _tiny(modality: str, **overrides):
    tokenizer, options, shape = MODELS[modality]
    raw = {"modality": modality, "tokenizer": tokenizer, "mask_ratio": 0.5, "decoder_num_heads": 2}
    torch.manual_seed(0)
    model = build_model(resolve_model_config({**raw, **COMMON, **options, **overrides})).eval()
    return model, shape


def _mask(model, batch: int) -> torch.Tensor:
    return sample_mask(
        model.masking,
        batch=batch,
        grid=model.tokenizer.grid,
        mask_ratio=model.mask_ratio,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(1),
    )


def _changed_where_removed(model, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with every removed patch replaced by other values (visible patches untouched)."""
    patches = model.tokenizer.patchify(x)  # (N, L, P)
    noise = 3 * torch.randn(patches.shape, generator=torch.Generator().manual_seed(2)) + 1
    return model.tokenizer.unpatchify(torch.where(mask.bool()[..., None], noise, patches)).reshape(x.shape)


def _figure(modality_name: str, model, x, mask, path, *, raw_stats: bool) -> np.ndarray:
    modality = get_registry().modality(modality_name)
    with torch.no_grad():
        _, pred, used = model(x, mask=mask)
    data = from_dict(modality.data_config, {}, "data")
    out, _ = render_figure(modality, model, inputs=x, pred=pred, mask=used, data=data, path=path, raw_stats=raw_stats)
    with Image.open(out) as image:
        return np.asarray(image.convert("RGB"))


def _original_panels(modality: str, figure: np.ndarray, x: torch.Tensor) -> np.ndarray:
    """A boolean (H, W) map of the figure's "original" panels, from each figure's layout (see its visualize.py)."""
    where = np.zeros(figure.shape[:2], dtype=bool)
    n = x.shape[0]
    if modality == "image":  # 4 columns of cells: pad 4, title strip 18
        pad, cell = 4, (figure.shape[1] - 4) // 4 - 4
        where[18 : 18 + n * (cell + pad) + pad, pad : pad + cell] = True
    elif modality == "video":  # 3 rows per sample (original first), 96-px label column, pad 2, square cells
        pad, frames = 2, x.shape[2]
        cell = (figure.shape[1] - 96 - pad) // frames - pad
        for i in range(n):
            y = pad + 3 * i * (cell + pad)
            where[y : y + cell, 96:] = True
    else:  # audio: 4 rows per clip (original first), layout constants of save_spectrogram_figure
        bins = x.shape[-1]
        panel_h = bins * math.ceil(128 / bins)
        row_h = 14 + panel_h + 6
        clip_h = 4 * row_h + 34
        for i in range(n):
            y = 6 + i * clip_h + 14
            where[y : y + panel_h, 52:] = True
    return where


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_raw_stats_figure_draws_removed_patches_without_reading_their_values(modality, tmp_path):
    model, shape = _tiny(modality)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    mask = _mask(model, 2)
    changed = _changed_where_removed(model, x, mask)
    assert not torch.equal(changed, x)

    a = _figure(modality, model, x, mask, tmp_path / "a.png", raw_stats=True)
    b = _figure(modality, model, changed, mask, tmp_path / "b.png", raw_stats=True)
    assert a.shape == b.shape
    original = _original_panels(modality, a, x)
    differs = (a != b).any(axis=-1)
    assert differs[original].any()  # the original panels show the change ...
    assert not differs[~original].any()  # ... and nothing else does: not the reconstructions, not the colour scale

    # With each true patch's statistics the reconstructions do follow the removed values.
    a_true = _figure(modality, model, x, mask, tmp_path / "a_true.png", raw_stats=False)
    b_true = _figure(modality, model, changed, mask, tmp_path / "b_true.png", raw_stats=False)
    assert (a_true != b_true).any(axis=-1)[~_original_panels(modality, a_true, x)].any()


def test_raw_stats_are_the_visible_patches_average_mean_and_std():
    model, shape = _tiny("image")
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    mask = _mask(model, 2)
    pred = torch.randn(2, 16, 192, generator=torch.Generator().manual_seed(3))
    pixels, caption = figure_prediction(model, x, pred, mask, raw_stats=True)
    assert caption == RAW_STATS_CAPTION

    # Reference in numpy: patches (row-in-patch, col-in-patch, channel), unbiased std with eps inside the root.
    images = x.permute(0, 2, 3, 1).numpy().astype(np.float64)  # (N, H, W, C)
    patches = images.reshape(2, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, 192)
    mean = patches.mean(-1)
    std = np.sqrt(patches.var(-1, ddof=1) + 1e-6)
    p = pred.numpy().astype(np.float64)
    for i in range(2):
        removed = mask[i].numpy().astype(bool)
        expected = p[i] * std[i, :, None] + mean[i, :, None]  # visible: their own statistics
        expected[removed] = p[i, removed] * std[i, ~removed].mean() + mean[i, ~removed].mean()
        np.testing.assert_allclose(pixels[i].numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("modality", "overrides", "caption"),
    [
        ("image", {"norm_pix_loss": True}, TRUE_STATS_CAPTION),
        ("image", {"norm_pix_loss": False}, ""),
        ("video", {"target": "videomae"}, TRUE_STATS_CAPTION),
        ("video", {"target": "videomae_pixels"}, ""),
        ("audio", {"norm_pix_loss": True}, TRUE_STATS_CAPTION),
        ("audio", {"norm_pix_loss": False}, ""),
    ],
)
def test_the_caption_names_true_statistics_for_norm_pix_targets_only(modality, overrides, caption):
    model, shape = _tiny(modality, **overrides)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    mask = _mask(model, 2)
    with torch.no_grad():
        _, pred, mask = model(x, mask=mask)
    assert figure_prediction(model, x, pred, mask)[1] == caption
    assert figure_prediction(model, x, pred, mask, raw_stats=True)[1] == (RAW_STATS_CAPTION if caption else "")


@pytest.mark.parametrize("norm_pix", [False, True])
def test_visualize_captions_norm_pix_figures_and_not_pixel_ones(
    norm_pix, tiny_config_file, tiny_image_folder, tmp_path, capsys
):
    assert (
        main(["pretrain", str(tiny_config_file), "train.epochs=1", "--no-progress", f"model.norm_pix_loss={norm_pix}"])
        == 0
    )
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoint-0001.pt"
    image = str(sorted((tiny_image_folder / "val").rglob("*.png"))[0])
    capsys.readouterr()
    sizes = {}
    for mode in ([], ["--raw-stats"]):
        out = tmp_path / f"figure{len(mode)}.png"
        assert main(["visualize", str(checkpoint), image, "-o", str(out), *mode]) == 0
        printed = capsys.readouterr().out
        caption = (RAW_STATS_CAPTION if mode else TRUE_STATS_CAPTION) if norm_pix else ""
        assert (caption in printed) if caption else ("removed patches" not in printed)
        with Image.open(out) as figure:
            sizes[len(mode)] = figure.size
    # One input: 18-px title strip, one row of 4 cells, pad 4; a caption adds a white strip with text below.
    width, height = sizes[0]
    cell = (width - 4) // 4 - 4
    grid_height = 18 + cell + 2 * 4
    assert sizes[0] == sizes[1]
    assert (height > grid_height) == norm_pix
    if norm_pix:
        with Image.open(tmp_path / "figure0.png") as figure:
            strip = np.asarray(figure.convert("L"))[grid_height:]
        assert (strip < 100).any()  # text in the strip


@pytest.mark.parametrize("modality", sorted(MODELS))
def test_removed_values_mark_exactly_the_values_of_removed_patches(modality):
    model, _ = _tiny(modality)
    mask = _mask(model, 2)
    removed = removed_values(mask, tokenizer=model.tokenizer)
    # back through the tokenizer: every value of a removed patch is 1, of a kept one 0
    patches = model.tokenizer.patchify(removed)  # (N, L, P)
    assert torch.equal(patches, mask.float()[..., None].expand_as(patches))


def test_grey_out_paints_the_removed_pixels_of_a_panel_in_place():
    panel = np.full((2, 3, 3), 200, dtype=np.uint8)
    hole = np.array([[True, False, False], [False, False, True]])
    assert grey_out(panel, hole) is panel
    assert (panel[hole] == 128).all() and (panel[~hole] == 200).all()
    pixels = grey_out(torch.zeros(2, 3, 3, dtype=torch.uint8), torch.from_numpy(hole), grey=127)
    assert pixels.sum(dim=-1).tolist() == [[381, 0, 0], [0, 0, 381]]
