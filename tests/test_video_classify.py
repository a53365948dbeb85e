"""Labelled video: classes from CSV lists and class folders, VideoMAE's fine-tuning and test samplers (offsets
computed by hand), augmentation identical on every frame of a clip, multi-view evaluation, and the CLI chain
pretrain -> finetune -> linprobe -> eval on generated videos."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision import transforms

from anymae.core.cli import main
from anymae.core.config import from_dict, load_classify_config
from anymae.core.data.samples import BadSampleError, DataError
from anymae.core.io.checkpoint import read_checkpoint
from anymae.modalities.image.classification import finetune_transform
from anymae.modalities.video import VideoDataConfig, VideoModality, VideoTokenizerConfig
from anymae.modalities.video import demo as demo_module
from anymae.modalities.video.classification import clip_transform
from anymae.modalities.video.decode import write_video
from anymae.modalities.video.sampling import (
    eval_clip_indices,
    eval_segment_indices,
    train_clip_indices,
    train_segment_indices,
)
from anymae.modalities.video.transforms import crop_starts, multi_crop_views

TOKENIZER = VideoTokenizerConfig(num_frames=4, img_size=16, patch_size=8, tubelet_size=2)
FINETUNE = {"recipe": "finetune", "auto_augment": "rand-m9-n4-mstd0.5-inc1", "reprob": 1.0, "remode": "pixel"}


def _coded(count: int, h: int = 16, w: int = 24) -> np.ndarray:
    """Frame i is a flat grey of value 5 * i: its index can be read back from the mean brightness."""
    return np.stack([np.full((h, w, 3), 5 * i, dtype=np.uint8) for i in range(count)])


def _moving(seed: int, direction: int, frames: int = 12, size: int = 24) -> np.ndarray:
    """A bright square on a noisy background sliding right (direction 1) or left (-1)."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 80, size=(frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        x = (4 + direction * f) % (size - 6)
        video[f, 8:14, x : x + 6] = 230
    return video


def _data(root: Path, **kw) -> VideoDataConfig:
    return from_dict(VideoDataConfig, {"root": str(root), "sampling_rate": 2, **kw}, "data")


class _FixedRng:
    """Stands in for a numpy Generator whose ``integers`` draw is known."""

    def __init__(self, value: int) -> None:
        self.value = value

    def integers(self, low: int, high: int | None = None, size: int | None = None) -> int:
        return self.value


# --- samplers ---------------------------------------------------------------------------------------------------
def test_finetune_clip_sampler_follows_videomae_linspace_windows():
    # Long video: end = 20 drawn from [16, 100), start 4: linspace(4, 20, 4) = 4, 9.33, 14.67, 20 -> clip to 19.
    assert train_clip_indices(100, num_frames=4, sampling_rate=4, rng=_FixedRng(20)) == [4, 9, 14, 19]
    # Short video (10 <= 16): linspace(0, 10, 10 // 4 = 2) = [0, 10], padded with 10, clipped to 9.
    assert train_clip_indices(10, num_frames=4, sampling_rate=4, rng=_FixedRng(0)) == [0, 9, 9, 9]
    ends = {train_clip_indices(30, num_frames=4, sampling_rate=4, rng=np.random.default_rng(s))[-1] for s in range(300)}
    assert ends == set(range(15, 29))  # end - 1 for end in [16, 30): VideoMAE's randint(converted_len, seg_len)


def test_eval_clip_views_are_videomae_test_windows():
    # Every 3rd frame of 40: [0, 3, ..., 39] (14); 3 windows of 4 start at int(k * (14 - 4) / 2) = 0, 5, 10.
    assert eval_clip_indices(40, num_frames=4, sampling_rate=3, num_segments=3) == [
        [0, 3, 6, 9],
        [15, 18, 21, 24],
        [30, 33, 36, 39],
    ]
    assert eval_clip_indices(40, num_frames=4, sampling_rate=3, num_segments=1) == [[15, 18, 21, 24]]  # centre
    # Shorter than a clip: [0, 3, 6] padded with its last frame; every window is the same.
    assert eval_clip_indices(7, num_frames=4, sampling_rate=3, num_segments=2) == [[0, 3, 6, 6]] * 2


def test_segment_sampler_takes_one_frame_per_segment_as_ssv2():
    # tick = 30 / 4 = 7.5: VideoMAE sorts [int(7.5 x)] + [int(3.75 + 7.5 x)] and splits even / odd positions.
    assert eval_segment_indices(30, num_frames=4, num_segments=2) == [[0, 7, 15, 22], [3, 11, 18, 26]]
    draws = np.array([train_segment_indices(40, num_frames=4, rng=np.random.default_rng(s)) for s in range(200)])
    assert (draws // 10 == np.arange(4)).all()  # frame x comes from segment [10 x, 10 x + 10)
    assert {int(v) for v in draws[:, 2]} == set(range(20, 30))
    assert train_segment_indices(3, num_frames=4, rng=np.random.default_rng(0)) == [0, 0, 0, 0]


# --- transforms -------------------------------------------------------------------------------------------------
def _seed(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def test_finetune_augmentation_is_identical_on_every_frame_and_differs_across_clips():
    image = np.asarray(Image.fromarray(_moving(3, 1, frames=1, size=40)[0]))
    frames = np.stack([image] * 6)  # a clip of identical frames
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    transform = clip_transform((32, 32), augment=FINETUNE, hflip=True, mean=mean, std=std, in_chans=3)
    _seed(0)
    clip = transform(frames)
    assert clip.shape == (3, 6, 32, 32)
    for t in range(1, 6):
        assert torch.equal(clip[:, t], clip[:, 0])  # same crop, flip, RandAugment ops and erased box
    # Each frame is exactly what timm's transform gives that image from the same generator state.
    _seed(0)
    reference = finetune_transform((32, 32), augment=FINETUNE, mean=mean, std=std)(Image.fromarray(image))
    assert torch.equal(clip[:, 0], reference)
    # Without the restored state, the frames of one clip would differ.
    _seed(0)
    frame_transform = finetune_transform((32, 32), augment=FINETUNE, mean=mean, std=std)
    naive = [frame_transform(Image.fromarray(f)) for f in frames]
    assert not all(torch.equal(naive[t], naive[0]) for t in range(1, 6))
    others = [transform(frames) for _ in range(3)]  # the generators moved on: other clips, other augmentations
    assert all(not torch.equal(o, clip) for o in others)


def test_flip_flag_removes_the_flip_from_finetune_and_linprobe():
    common = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "in_chans": 3}
    for augment in (FINETUNE, {"recipe": "linprobe"}):
        with_flip = clip_transform((16, 16), augment=augment, hflip=True, **common).args[0]
        without = clip_transform((16, 16), augment=augment, hflip=False, **common).args[0]
        kinds = [type(t) for t in with_flip.transforms]
        assert transforms.RandomHorizontalFlip in kinds
        assert [type(t) for t in without.transforms] == [k for k in kinds if k is not transforms.RandomHorizontalFlip]


def test_multi_crop_views_are_videomae_crops_along_the_longer_side():
    unit = {"mean": (0,) * 3, "std": (1 / 255,) * 3, "in_chans": 3}  # outputs are the uint8 pixel values
    columns = np.broadcast_to(np.arange(40, dtype=np.uint8)[None, None, :, None], (2, 16, 40, 3)).copy()
    # Already 16 on the short side, so no resize: 3 crops of 16 start at int(k * (40 - 16) / 2) = 0, 12, 24.
    views = multi_crop_views(columns, (16, 16), short_side=16, num_crops=3, **unit)
    assert views.shape == (3, 3, 2, 16, 16)
    assert [round(float(v[0, 0, 0, 0])) for v in views] == [0, 12, 24]
    rows = np.ascontiguousarray(columns.transpose(0, 2, 1, 3))  # portrait: crops go down the rows
    views = multi_crop_views(rows, (16, 16), short_side=16, num_crops=3, **unit)
    assert [round(float(v[0, 0, 0, 0])) for v in views] == [0, 12, 24]
    assert crop_starts(41, 16, 1) == [12] and crop_starts(42, 16, 1) == [13]  # VideoMAE: int(round(room / 2))
    assert crop_starts(340, 224, 3) == [0, 58, 116]


# --- labelled datasets ------------------------------------------------------------------------------------------
def test_multi_view_eval_items_stack_clips_times_crops(tmp_path):
    for name in ("a", "b"):
        write_video(tmp_path / "val" / name / f"{name}.mp4", _coded(40, h=16, w=40), fps=10)
        write_video(tmp_path / "train" / name / f"{name}.mp4", _coded(20), fps=10)
    data = _data(tmp_path, sampling_rate=3, test_num_segment=3, test_num_crop=3)
    dataset = VideoModality().build_labelled_dataset(data, TOKENIZER, split="heldout", augment=None, crop_pct=1.0)
    assert dataset.num_views == 9 and dataset.classes == ["a", "b"]
    x, label = dataset[1]
    assert x.shape == (9, 3, 4, 16, 16) and label == 1
    mean, std = torch.tensor(data.mean).view(1, 3, 1), torch.tensor(data.std).view(1, 3, 1)
    grey = ((x.mean(dim=(-2, -1)) * std + mean).mean(1) * 255 / 5).round().long()  # (V, T) frame indices
    expected = [[0, 3, 6, 9], [15, 18, 21, 24], [30, 33, 36, 39]]  # hand-computed above, clip-major
    assert grey.tolist() == [clip for clip in expected for _ in range(3)]
    single = VideoModality().build_labelled_dataset(_data(tmp_path), TOKENIZER, split="heldout", augment=None)
    assert single.num_views == 1 and single[0][0].shape == (3, 4, 16, 16)


def test_csv_labels_give_integer_classes_shared_by_both_splits(tmp_path):
    for name in ("a", "b", "c"):
        write_video(tmp_path / "clips" / f"{name}.mp4", _coded(12), fps=10)
    (tmp_path / "train.csv").write_text("clips/a.mp4 0\nclips/b.mp4 2\n")
    (tmp_path / "val.csv").write_text("clips/c.mp4 1\n")
    modality, finetune = VideoModality(), {"recipe": "finetune", "auto_augment": None, "reprob": 0.0}
    train = modality.build_labelled_dataset(_data(tmp_path), TOKENIZER, split="train", augment=finetune)
    val = modality.build_labelled_dataset(_data(tmp_path), TOKENIZER, split="heldout", augment=None)
    assert train.classes == val.classes == ["0", "1", "2"]  # K = largest training label + 1
    assert [label for _, label in train.items] == [0, 2] and val[0][1] == 1
    x, _ = train[1]
    assert x.shape == (3, 4, 16, 16)
    (tmp_path / "names.txt").write_text("cat\ndog\nemu\nfox\n")
    named = modality.build_labelled_dataset(
        _data(tmp_path, classes_file="names.txt"), TOKENIZER, split="heldout", augment=None
    )
    assert named.classes == ["cat", "dog", "emu", "fox"]
    (tmp_path / "val.csv").write_text("clips/c.mp4 3\n")
    with pytest.raises(DataError, match=r"val\.csv: label 3 .* out of range for 3 classes"):
        modality.build_labelled_dataset(_data(tmp_path), TOKENIZER, split="heldout", augment=None)
    (tmp_path / "train.csv").write_text("clips/a.mp4 0\nclips/b.mp4\n")
    with pytest.raises(DataError, match=r"train\.csv: .*b\.mp4 has no integer label"):
        modality.build_labelled_dataset(_data(tmp_path), TOKENIZER, split="train", augment=finetune)


def test_video_lists_take_comments_blank_lines_and_labels_by_class_name(tmp_path):
    for name in ("a", "b c", "d"):
        write_video(tmp_path / "clips" / f"{name}.mp4", _coded(12), fps=10)
    (tmp_path / "names.txt").write_text("# one class a line\ncat\ndog\n")
    (tmp_path / "train.csv").write_text("# VideoMAE-style list\nclips/a.mp4 dog\n\nclips/b c.mp4 0  # by index\n")
    (tmp_path / "val.csv").write_text("clips/d.mp4 cat\n")
    data = _data(tmp_path, classes_file="names.txt")
    modality = VideoModality()
    train = modality.build_labelled_dataset(data, TOKENIZER, split="train", augment={"recipe": "linprobe"})
    assert train.classes == ["cat", "dog"]
    assert [(p.name, label) for p, label in train.items] == [("a.mp4", 1), ("b c.mp4", 0)]
    val = modality.build_labelled_dataset(data, TOKENIZER, split="heldout", augment=None)
    assert [label for _, label in val.items] == [0]
    (tmp_path / "val.csv").write_text("clips/d.mp4 emu\n")  # not a class name: the whole line is a path
    with pytest.raises(DataError, match=r"val\.csv: .*d\.mp4 emu has no integer label"):
        modality.build_labelled_dataset(data, TOKENIZER, split="heldout", augment=None)


def test_class_folders_are_numbered_by_the_training_split(tmp_path):
    for name in ("zebra", "ant"):
        write_video(tmp_path / "train" / name / "x.mp4", _coded(12), fps=10)
    write_video(tmp_path / "val" / "zebra" / "y.mp4", _coded(12), fps=10)
    (tmp_path / "val" / "loose.mp4").write_bytes(b"")  # files outside class folders are not labelled: ignored
    modality = VideoModality()
    val = modality.build_labelled_dataset(_data(tmp_path), TOKENIZER, split="heldout", augment=None)
    assert val.classes == ["ant", "zebra"] and [label for _, label in val.items] == [1]
    write_video(tmp_path / "val" / "yak" / "z.mp4", _coded(12), fps=10)
    with pytest.raises(DataError, match=r"class folders \['yak'\]"):
        modality.build_labelled_dataset(_data(tmp_path), TOKENIZER, split="heldout", augment=None)
    with pytest.raises(DataError, match=r"at least 2 class sub-folder\(s\)"):
        modality.build_labelled_dataset(_data(tmp_path, train_split="val/zebra"), TOKENIZER, split="train",
                                        augment={"recipe": "linprobe"})  # fmt: skip


def test_unreadable_labelled_video_raises_naming_the_file(tmp_path):
    write_video(tmp_path / "train" / "a" / "ok.mp4", _coded(12), fps=10)
    (tmp_path / "train" / "b").mkdir(parents=True)
    (tmp_path / "train" / "b" / "empty.mp4").write_bytes(b"")
    dataset = VideoModality().build_labelled_dataset(_data(tmp_path), TOKENIZER, split="train",
                                                     augment={"recipe": "linprobe"})  # fmt: skip
    with pytest.raises(BadSampleError, match=r"empty\.mp4"):
        dataset[1]


def test_motion_demo_classes_move_the_way_they_are_named(tmp_path, monkeypatch):
    def shift(video: np.ndarray) -> tuple[int, int]:
        grey = video.astype(float).mean(-1)
        errors = {(dy, dx): np.abs(np.roll(grey[0], (dy, dx), (0, 1)) - grey[2]).mean() for dy in range(-6, 7)
                  for dx in range(-6, 7)}  # fmt: skip
        return min(errors, key=errors.get)

    for name, (dy, dx) in demo_module.MOTIONS.items():
        moved = shift(demo_module.make_demo_video(7, frames=3, direction=(dy, dx)))
        assert np.sign(moved).tolist() == [np.sign(dy), np.sign(dx)], name
    monkeypatch.setenv("ANYMAE_CACHE", str(tmp_path))
    monkeypatch.setattr(demo_module, "MOTION_TRAIN", 1)
    monkeypatch.setattr(demo_module, "MOTION_HELDOUT", 1)
    monkeypatch.setattr(demo_module, "FRAMES", 4)
    root = demo_module.resolve_root("builtin:demo_motion")
    assert sorted(p.name for p in (root / "heldout").iterdir()) == ["down", "left", "right", "up"]
    assert len(list(root.rglob("*.mp4"))) == 8


# --- recipes ----------------------------------------------------------------------------------------------------
# VideoMAE's finetune.sh values, typed from the scripts: (GPUs, --batch_size videos, --lr, --layer_decay, --epochs,
# test segments, Kinetics?). Every script uses --num_sample 2: data.num_sample 2, two augmentations per video and step.
VIDEOMAE_SCRIPTS = {
    "videomae_vit_base_k400_finetune": (64, 6, 5e-4, 0.75, 75, 5, True),
    "videomae_vit_small_k400_finetune": (32, 12, 5e-4, 0.75, 150, 5, True),
    "videomae_vit_base_ssv2_finetune": (64, 6, 5e-4, 0.75, 30, 2, False),
    "videomae_vit_small_ssv2_finetune": (32, 12, 1e-3, 0.7, 40, 2, False),
}


@pytest.mark.parametrize("name", sorted(VIDEOMAE_SCRIPTS))
def test_videomae_finetune_configs_hold_the_script_values(name):
    gpus, videos, lr, layer_decay, epochs, segments, kinetics = VIDEOMAE_SCRIPTS[name]
    cfg = load_classify_config(name, mode="finetune")
    f, d, o, t = cfg.finetune, cfg.data, cfg.optim, cfg.train
    assert (d.num_sample, d.repeats, t.batch_size) == (2, 1, videos)
    # VideoMAE scales its lr by the videos per step, anymae by the clips: the absolute lr must agree.
    assert o.blr * t.batch_size * d.num_sample * t.accum_iter * gpus / 256 == pytest.approx(lr * videos * gpus / 256)
    assert o.min_lr == pytest.approx(1e-6 * videos * gpus / 256)
    assert (f.layer_decay, t.epochs, o.warmup_epochs, o.weight_decay, tuple(o.betas)) == (
        layer_decay, epochs, 5, 0.05, (0.9, 0.999))  # fmt: skip
    assert (f.drop_path, f.mixup, f.cutmix, f.label_smoothing, f.reprob) == (0.1, 0.8, 1.0, 0.1, 0.25)
    assert (f.auto_augment, f.head_init_std, f.global_pool) == ("rand-m7-n4-mstd0.5-inc1", 2e-5, True)
    assert (d.test_num_segment, d.test_num_crop, f.eval_crop_pct, f.view_reduce) == (segments, 3, 1.0, "softmax")
    assert (d.frame_sampler, d.classify_hflip) == (("clip", True) if kinetics else ("segments", False))
    assert d.sampling_rate == 4 or not kinetics


# --- the CLI chain ----------------------------------------------------------------------------------------------
def _labelled_videos(root: Path) -> None:
    """train/{left,right}/ 4 videos each, val/{left,right}/ 2 each."""
    seed = 0
    for split, count in (("train", 4), ("val", 2)):
        for name, direction in (("left", -1), ("right", 1)):
            for _ in range(count):
                write_video(root / split / name / f"{name}{seed}.mp4", _moving(seed, direction), fps=10)
                seed += 1


def test_pretrain_finetune_linprobe_eval_on_videos_through_the_cli(tmp_path, capsys):
    root, runs = tmp_path / "videos", tmp_path / "runs"
    _labelled_videos(root)
    model = {"modality": "video", "tokenizer": {"num_frames": 4, "img_size": 16, "patch_size": 8},
             "masking": "tube", "mask_ratio": 0.5, "target": "videomae", "cls_token": False, "decoder": "videomae",
             "pred_masked_only": True, "embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 16,
             "decoder_depth": 1, "decoder_num_heads": 2}  # fmt: skip
    train = {"epochs": 1, "batch_size": 4, "num_workers": 0, "device": "cpu", "output_dir": str(runs),
             "pin_memory": False, "heldout_batches": 1, "figure_samples": 1}  # fmt: skip
    config = {
        "name": "tiny_video",
        "model": model,
        "data": {"root": str(root), "heldout_split": "val", "sampling_rate": 2},
        "optim": {"blr": 1.5e-4, "lr": 1e-3, "warmup_epochs": 0},
        "train": train,
    }
    (tmp_path / "tiny_video.yaml").write_text(yaml.safe_dump(config))
    assert main(["pretrain", str(tmp_path / "tiny_video.yaml"), "--no-progress"]) == 0
    pretrained = next((runs / "tiny_video").glob("checkpoint-*.pt"))
    common = [f"data.root={root}", "data.heldout_split=val", "train.epochs=1", "train.batch_size=4",
              "train.num_workers=0", "train.pin_memory=false", "train.device=cpu", f"train.output_dir={runs}",
              "--no-progress"]  # fmt: skip

    capsys.readouterr()
    multi_view = ["data.test_num_segment=2", "data.test_num_crop=3"]  # 6 views per held-out video
    mixed = ["finetune.mixup=0.8", "finetune.cutmix=1.0"]  # VideoMAE's values (the demo turns them off)
    repeated = ["data.num_sample=2"]  # VideoMAE's repeated augmentation: 4 videos -> 8 clips per step
    args = [f"finetune.checkpoint={pretrained}", *multi_view, *mixed, *repeated, *common]
    assert main(["finetune", "demo_video_finetune", *args]) == 0
    out = capsys.readouterr().out
    acc = float(re.search(r"epoch 1: top-1 (\d+\.\d+)%", out).group(1))
    assert 0 <= acc <= 100
    finetuned = read_checkpoint(runs / "demo_video_finetune" / "checkpoint-best.pt")
    assert finetuned["config"]["classes"] == ["left", "right"] and finetuned["eval"]["n"] == 4
    train_set = VideoModality().build_labelled_dataset(
        from_dict(VideoDataConfig, {"root": str(root), "num_sample": 2}, "data"),
        VideoTokenizerConfig(num_frames=4, img_size=16, patch_size=8),
        split="train",
        augment={"recipe": "linprobe"},
    )
    (clips, label), seen = train_set[0], set()
    assert train_set.samples_per_item == 2 and clips.shape == (2, 3, 4, 16, 16) and label in (0, 1)
    for _ in range(4):  # the two views are independent augmentations of one decoded clip
        a, b = train_set[0][0]
        seen.add(torch.equal(a, b))
    assert seen == {False}
    assert "fc_norm.weight" in finetuned["model"]

    assert main(["linprobe", "demo_video_linprobe", "preset=adamw", f"linprobe.checkpoint={pretrained}", *common]) == 0
    probe = runs / "demo_video_linprobe" / "checkpoint-best.pt"
    probed, original = read_checkpoint(probe)["model"], read_checkpoint(pretrained)["model"]
    for key, value in original.items():
        if key.startswith(("encoder.blocks.", "tokenizer.")):
            assert torch.equal(probed[key], value), key  # the encoder stays frozen
    assert (runs / "demo_video_linprobe" / "metrics.jsonl").is_file()

    capsys.readouterr()
    assert main(["eval", str(runs / "demo_video_finetune" / "checkpoint-last.pt"), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("heldout: 4 samples")
    assert 0 <= float(re.search(r"top-1 (\d+\.\d+)%", line).group(1)) <= 100
