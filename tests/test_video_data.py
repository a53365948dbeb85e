"""Video datasets (CSV, class folders, flat), VideoMAE's multi-scale crop, figures and the demo videos."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from anymae.core.config import from_dict, load_config
from anymae.core.data.samples import DataError
from anymae.modalities.video import VideoDataConfig, VideoModality, VideoTokenizerConfig
from anymae.modalities.video import demo as demo_module
from anymae.modalities.video.data import VideoClips
from anymae.modalities.video.decode import write_video
from anymae.modalities.video.modality import _train_transform
from anymae.modalities.video.transforms import multiscale_crop_box, normalize_clip, pretrain_clip, to_uint8_clip

TOKENIZER = VideoTokenizerConfig(num_frames=4, img_size=32, patch_size=8, tubelet_size=2)


def _video(path: Path, seed: int, frames: int = 20) -> Path:
    rng = np.random.default_rng(seed)
    return write_video(path, rng.integers(0, 256, size=(frames, 40, 48, 3), dtype=np.uint8), fps=10)


def _data(root: Path, **kw) -> VideoDataConfig:
    return from_dict(VideoDataConfig, {"root": str(root), "sampling_rate": 2, **kw}, "data")


def test_csv_list_with_relative_paths_and_labels(tmp_path):
    _video(tmp_path / "clips" / "a.mp4", 0)
    _video(tmp_path / "clips" / "b c.webm", 1)  # a space in the name: the label is the last field
    (tmp_path / "train.csv").write_text("clips/a.mp4 3\nclips/b c.webm 7\n\n")
    dataset = VideoModality().build_dataset(_data(tmp_path), TOKENIZER, split="train")
    assert [p.name for p in dataset.files] == ["a.mp4", "b c.webm"]
    clip = dataset[0]
    assert clip.shape == (3, 4, 32, 32) and clip.dtype == torch.float32
    assert clip.min() > -2.2 and clip.max() < 2.7  # ImageNet-normalized [0, 1] pixels


def test_class_folders_flat_folders_and_heldout_clips(tmp_path):
    for i, cls in enumerate(("dogs", "cats")):
        _video(tmp_path / "train" / cls / f"{cls}.mp4", i)
    _video(tmp_path / "val" / "v.avi", 5)
    modality = VideoModality()
    train = modality.build_dataset(_data(tmp_path, repeats=3), TOKENIZER, split="train")
    assert len(train) == 6
    heldout = modality.build_dataset(_data(tmp_path, heldout_clips=2), TOKENIZER, split="heldout")
    assert len(heldout) == 2
    assert not torch.equal(heldout[0], heldout[1])  # two different, evenly spaced clips
    assert torch.equal(heldout[0], heldout[0])  # evaluation views are fixed
    assert modality.build_dataset(_data(tmp_path, heldout_split="nope"), TOKENIZER, split="heldout") is None
    with pytest.raises(DataError, match=r"data\.train_split"):
        modality.build_dataset(_data(tmp_path, train_split="missing"), TOKENIZER, split="train")


def test_repeated_sampling_items_stack_clips_and_fold_in_the_model(tmp_path):
    path = _video(tmp_path / "train" / "a.mp4", 0, frames=40)
    stacked = VideoModality().build_dataset(_data(tmp_path, num_sample=3), TOKENIZER, split="train")
    assert stacked.samples_per_item == 3 and stacked[0].shape == (3, 3, 4, 32, 32)
    data = _data(tmp_path)
    dataset = VideoClips(
        [path],
        num_frames=4,
        sampling_rate=2,
        mode="random",
        num_clips=3,
        transform=partial(_train_transform, size=TOKENIZER.size, data=data, in_chans=3),
    )
    item = dataset[0]
    assert item.shape == (3, 3, 4, 32, 32)
    batch = torch.stack([item, item])  # what the default collate makes of two items: (N, S, C, T, H, W)
    tokenizer = VideoModality().build_tokenizer(TOKENIZER, embed_dim=16)
    assert tokenizer(batch).shape == (6, 32, 16)


def test_multiscale_crop_boxes_are_videomae_sizes_on_the_quarter_grid():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        top, left, h, w = multiscale_crop_box(
            (256, 320),
            (224, 224),
            scales=(1, 0.875, 0.75, 0.66),
            max_distort=1,
            fix_crop=True,
            more_fix_crop=True,
            rng=rng,
        )
        seen.add((h, w))
        # Sides int(256 * scale) = 256, 224, 192, 168 (224 within 3 px of the output snaps to it).
        assert h in (256, 224, 192, 168) and w in (256, 224, 192, 168)
        sides = (256, 224, 192, 168)
        assert abs(sides.index(h) - sides.index(w)) <= 1  # max_distort 1
        assert top % ((256 - h) // 4 or 1) == 0 and left % ((320 - w) // 4 or 1) == 0
        assert top + h <= 256 and left + w <= 320
    assert len(seen) == 10  # 4 same-scale pairs + 6 neighbours


def test_pretrain_clip_crops_every_frame_identically():
    frames = np.zeros((4, 48, 64, 3), np.uint8)
    frames[:, :, :32] = 255
    clip = pretrain_clip(
        frames,
        (16, 16),
        scales=(0.5,),
        max_distort=0,
        fix_crop=True,
        more_fix_crop=False,
        hflip=False,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        in_chans=3,
        rng=np.random.default_rng(3),
    )
    assert clip.shape == (3, 4, 16, 16)
    assert torch.equal(clip[:, 0], clip[:, 3])


def test_render_reconstruction_writes_png_grid_gif_and_mp4(tmp_path):
    tokenizer = VideoModality().build_tokenizer(TOKENIZER, embed_dim=16)
    x = torch.randn(2, 3, 4, 32, 32)
    mask = torch.zeros(2, 32)
    mask[:, ::2] = 1
    path = VideoModality().render_reconstruction(
        inputs=x,
        pred=tokenizer.patchify(x),
        mask=mask,
        tokenizer=tokenizer,
        data=VideoDataConfig(),
        path=tmp_path / "figure.png",
    )
    grid = np.asarray(Image.open(path).convert("RGB"))
    # 4 frame columns of 64 px (32 px zoomed x2) + 2 px gaps after a 96 px label column; 2 samples x 3 rows.
    assert grid.shape == (6 * 66 + 2, 96 + 4 * 66 + 2, 3)
    cell = lambda row, col: grid[2 + row * 66 : 2 + row * 66 + 64, 98 + col * 66 : 98 + col * 66 + 64]  # noqa: E731
    assert np.array_equal(cell(0, 1), cell(2, 1))  # a perfect prediction reconstructs the original
    assert (cell(1, 1) == 128).all(axis=-1).mean() == pytest.approx(0.5)  # half the tubelets are grey
    with av.open(str(tmp_path / "figure.gif")) as container:
        assert len(list(container.decode(video=0))) == 4
    with av.open(str(tmp_path / "figure.mp4")) as container:
        codec = container.streams.video[0].codec_context.name
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and codec == "h264"


def test_demo_videos_are_deterministic_moving_and_generated_once(tmp_path, monkeypatch):
    a, b = demo_module.make_demo_video(3, frames=6), demo_module.make_demo_video(3, frames=6)
    assert np.array_equal(a, b)
    assert np.abs(np.diff(a.astype(int), axis=0)).mean() > 1  # things move
    monkeypatch.setenv("ANYMAE_CACHE", str(tmp_path))
    monkeypatch.setattr(demo_module, "NUM_TRAIN", 2)
    monkeypatch.setattr(demo_module, "NUM_HELDOUT", 1)
    monkeypatch.setattr(demo_module, "FRAMES", 8)
    root = demo_module.resolve_root("builtin:demo_videos")
    assert sorted(p.name for p in (root / "train").iterdir()) == ["demo000.mp4", "demo001.mp4"]
    stamp = (root / "train" / "demo000.mp4").stat().st_mtime_ns
    assert demo_module.resolve_root("builtin:demo_videos") == root
    assert (root / "train" / "demo000.mp4").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "name", [f"videomae_vit_{s}_{d}" for s in ("small", "base", "large") for d in ("k400", "ssv2")]
)
def test_bundled_videomae_configs_validate(name):
    cfg = load_config(name)
    m = cfg.model
    assert (m.modality, m.masking, m.mask_ratio, m.target, m.cls_token) == ("video", "tube", 0.9, "videomae", False)
    assert (m.decoder, m.pred_masked_only, m.tokenizer.num_frames) == ("videomae", True, 16)
    assert cfg.data.sampling_rate == (4 if name.endswith("k400") else 2)
    assert cfg.data.hflip is False
    assert cfg.optim.blr == 1.5e-4 and cfg.optim.warmup_epochs == 40


def test_load_inputs_gives_one_centre_clip_per_file(tmp_path):
    paths = [_video(tmp_path / f"v{i}.mp4", i, frames=12) for i in range(2)]
    batch = VideoModality().load_inputs(paths, _data(tmp_path), TOKENIZER)
    assert batch.shape == (2, 3, 4, 32, 32)
    again = VideoModality().load_inputs(paths, _data(tmp_path), TOKENIZER)
    assert torch.equal(batch, again)


def test_repeated_sampling_draws_one_mask_per_clip_and_trains(tmp_path):
    """``num_sample: 2``: one decode gives 2 clips; SafeDataset draws an independent mask for each (the first is
    the one a single-clip item would get), and the trainer folds (N, S, ...) into N*S clips, lr counting clips."""
    from anymae.core import pretrain
    from anymae.core.config import resolve_config
    from anymae.core.data.samples import SafeDataset
    from anymae.core.model.masking import SampleMasker
    from anymae.modalities.video.masking import tube_masking

    for i in range(4):
        _video(tmp_path / "train" / f"v{i}.mp4", i, frames=24)
    masker = SampleMasker(tube_masking, (2, 4, 4), 0.75)
    dataset = VideoModality().build_dataset(_data(tmp_path, num_sample=2), TOKENIZER, split="train")
    two = SafeDataset(dataset, seed=3, mask_fn=masker, masks_per_item=2)[(1, 2)]
    one = SafeDataset(dataset, seed=3, mask_fn=masker)[(1, 2)]
    assert two["input"].shape == (2, 3, 4, 32, 32) and two["mask"].shape == (2, 32)
    assert torch.equal(two["mask"][0], one["mask"]) and not torch.equal(two["mask"][0], two["mask"][1])
    config = {
        "model": {"modality": "video", "tokenizer": {"num_frames": 4, "img_size": 32, "patch_size": 8},
                  "masking": "tube", "target": "videomae", "cls_token": False, "decoder": "videomae",
                  "pred_masked_only": True, "embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_embed_dim": 16,
                  "decoder_depth": 1, "decoder_num_heads": 2},
        "data": {"root": str(tmp_path), "heldout_split": None, "sampling_rate": 2, "num_sample": 2},
        "optim": {"blr": 1.0e-3, "warmup_epochs": 0},
        "train": {"epochs": 1, "batch_size": 2, "num_workers": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"),
                  "figure_samples": 0, "log_every_steps": 1},
    }  # fmt: skip
    result = pretrain(resolve_config(config), progress=False)
    records = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    steps = [r for r in records if "lr" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) for r in steps)  # 4 videos / batch 2
    assert steps[0]["lr"] == pytest.approx(1.0e-3 * (2 * 2) / 256)  # blr x (2 videos x 2 clips) / 256, no warm-up


@pytest.mark.parametrize("in_chans", [3, 1])
def test_normalize_clip_is_the_per_channel_formula_in_c_t_h_w(in_chans):
    """Issue 20's single float conversion: (x / 255 - mean) / std per channel, (T, 3, H, W) channels-last uint8 in,
    (C, T, H, W) out; T = 3 so that a copy that forgot the transpose would still fit and be caught."""
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 5, 7, 3), dtype=np.uint8)  # (T, H, W, 3)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    clip = to_uint8_clip(frames)  # (T, 3, H, W), a channels-last view
    x = frames.astype(np.float64).transpose(3, 0, 1, 2)  # (3, T, H, W)
    if in_chans == 1:
        x, mean, std = (x * np.array([0.299, 0.587, 0.114]).reshape(3, 1, 1, 1)).sum(0, keepdims=True), (0.5,), (0.25,)
    expected = (x / 255 - np.reshape(mean, (-1, 1, 1, 1))) / np.reshape(std, (-1, 1, 1, 1))
    got = normalize_clip(clip, mean, std, in_chans=in_chans)
    assert got.shape == (in_chans, 3, 5, 7) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("size", [(16, 16), (112, 96)])
def test_uint8_pretrain_crop_equals_pils_crop_and_bilinear_resize_within_one_level(size):
    """VideoMAE crops and resizes each frame with PIL (``img.crop(box).resize(size, Image.BILINEAR)``): the uint8
    clip path gives those pixels within one level of 255, for a shrink and an enlargement, on noise frames."""
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 60, 80, 3), dtype=np.uint8)  # (T, H, W, 3)
    options = {"scales": (1, 0.875, 0.75, 0.66), "max_distort": 1, "fix_crop": True, "more_fix_crop": True}
    clip = pretrain_clip(frames, size, **options, hflip=False, mean=(0, 0, 0), std=(1, 1, 1), in_chans=3,
                         rng=np.random.default_rng(5))  # fmt: skip
    top, left, h, w = multiscale_crop_box(frames.shape[1:3], size, **options, rng=np.random.default_rng(5))
    assert (h, w) != (60, 80) and (h, w) != size  # a real crop and a real resize
    for t in range(len(frames)):
        box = (left, top, left + w, top + h)
        expected = np.asarray(Image.fromarray(frames[t]).crop(box).resize(size[::-1], Image.BILINEAR), np.int16)
        got = (clip[:, t] * 255).round().to(torch.int16).permute(1, 2, 0).numpy()  # (h, w, 3) levels
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1, t
