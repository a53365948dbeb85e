"""``anymae embed`` (issue 15): one feature row per file, equal to ``model.encode`` on the same inputs, and long audio
and video cut into sliding windows (one row per window, with its start time)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_mae
from PIL import Image

from anymae.core.cli import main
from anymae.core.data.samples import DataError
from anymae.core.evaluate.embed import embed_files, read_embeddings
from anymae.core.io.checkpoint import export_safetensors


def _model(**model: object):
    return tiny_mae(**model)


def _images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _reference_eval_input(path: Path) -> torch.Tensor:
    """The official MAE evaluation input of a 24x20 file for a 16 px model, with PIL and numpy: shorter side to
    int(16 / 0.875) = 18 (bicubic; 24x20 -> 21x18), centre 16x16 crop (left 2, top 1), ImageNet normalization."""
    with Image.open(path) as im:
        assert im.size == (24, 20)
        pixels = np.asarray(im.convert("RGB").resize((21, 18), Image.BICUBIC).crop((2, 1, 18, 17)), np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return torch.from_numpy(((pixels / 255 - mean) / std).astype(np.float32)).permute(2, 0, 1)  # (3, 16, 16)


def test_image_rows_equal_model_encode_of_the_same_inputs_in_the_cli_output(tmp_path: Path) -> None:
    model = _model(tokenizer={"img_size": 16, "patch_size": 8})
    checkpoint = export_safetensors(model, tmp_path / "mae.safetensors")
    paths = _images(tmp_path / "photos", 5)
    (tmp_path / "some.txt").write_text("# two of them\nphotos/img3.png\n\nphotos/img0.png\n")
    out = tmp_path / "features.safetensors"

    code = main(
        [
            "embed",
            str(checkpoint),
            str(paths[1]),
            str(tmp_path / "photos"),
            str(tmp_path / "some.txt"),
            "-o",
            str(out),
            "--batch-size",
            "3",
            "--no-progress",
        ]
    )

    assert code == 0
    saved = read_embeddings(out)
    files = [paths[1], *paths, paths[3], paths[0]]
    assert saved.files == [str(p) for p in files] and saved.pool == "cls"
    assert saved.file_index.tolist() == list(range(8)) and saved.start.tolist() == [0.0] * 8
    inputs = torch.stack([_reference_eval_input(p) for p in files])
    with torch.no_grad():
        tokens = model.encode(inputs)  # (N, 1 + L, D)
    assert torch.allclose(saved.features, tokens[:, 0], atol=1e-5)
    mean = embed_files(model, files[:2], pool="mean", device="cpu")
    assert torch.allclose(mean.features, tokens[:2, 1:].mean(dim=1), atol=1e-5)


def test_windows_are_refused_for_images_and_missing_inputs_are_named(tmp_path: Path, capsys) -> None:
    model = _model(tokenizer={"img_size": 16, "patch_size": 8})
    paths = _images(tmp_path / "photos", 1)
    with pytest.raises(DataError, match="'image' has no time axis"):
        embed_files(model, paths, window=2.0, device="cpu")
    checkpoint = export_safetensors(model, tmp_path / "mae.safetensors")
    assert main(["embed", str(checkpoint), str(tmp_path / "nope.png"), "-o", str(tmp_path / "f.safetensors")]) == 1
    assert f"input {tmp_path / 'nope.png'} does not exist" in capsys.readouterr().err


def test_long_audio_gives_one_row_per_window_equal_to_encode_of_that_stretch(tmp_path: Path) -> None:
    from anymae.modalities.audio.decode import load_waveform
    from anymae.modalities.audio.encode import encode_audio
    from anymae.modalities.audio.features import features

    rate = 16000
    t = np.arange(int(2.3 * rate)) / rate
    path = encode_audio(tmp_path / "long.wav", 0.3 * np.sin(2 * np.pi * (300 + 400 * t) * t), sample_rate=rate)
    # 64 frames of 10 ms: a 0.655 s model span (0.025 s window + 63 shifts of 0.01 s).
    model = _model(modality="audio", tokenizer={"target_length": 64, "num_mel_bins": 32, "patch_size": 16})

    result = embed_files(model, [path], window=0.5, hop=0.4, device="cpu")

    # Starts every 0.4 s while the file goes on: 0, 0.4, ..., 2.0 (the last window runs to the end at 2.3 s).
    assert np.allclose(result.start.numpy(), [0.0, 0.4, 0.8, 1.2, 1.6, 2.0])
    wave = load_waveform(path, sample_rate=rate)
    data = {"sample_rate": rate, "num_mel_bins": 32, "target_length": 64, "mean": -4.2677393, "std": 4.5689974}
    inputs = torch.stack(
        [features(wave[round(s * rate) : round(s * rate) + 8000], **data) for s in result.start.tolist()]
    )
    with torch.no_grad():
        expected = model.encode(inputs)[:, 0]
    assert torch.allclose(result.features, expected, atol=1e-5)
    default = embed_files(model, [path], device="cpu")  # windows of the model's span, end to end
    assert np.allclose(default.start.numpy(), np.arange(4) * 10480 / rate)
    with pytest.raises(DataError, match=r"longer than the model's input, 0\.655 s"):
        embed_files(model, [path], window=1.0, device="cpu")


def test_long_video_gives_one_row_per_window_equal_to_encode_of_that_clip(tmp_path: Path) -> None:
    from anymae.core.config import from_dict
    from anymae.modalities.video.decode import read_clips_at, write_video
    from anymae.modalities.video.modality import VideoDataConfig, VideoTokenizerConfig
    from anymae.modalities.video.transforms import eval_clip

    rng = np.random.default_rng(0)
    path = write_video(tmp_path / "long.mp4", rng.integers(0, 256, size=(37, 24, 32, 3), dtype=np.uint8), fps=10)
    tokenizer = {"num_frames": 4, "img_size": 16, "patch_size": 8, "tubelet_size": 2}
    model = _model(modality="video", tokenizer=tokenizer, cls_token=False)
    model.config["data"] = {"sampling_rate": 2}

    result = embed_files(model, [path], device="cpu")  # windows of 4 frames 2 apart: 0.8 s at 10 fps

    assert result.pool == "mean" and np.allclose(result.start.numpy(), [0.0, 0.8, 1.6, 2.4, 3.2])
    starts = [0, 8, 16, 24, 32]  # the last window runs past frame 36 and repeats it
    clips = read_clips_at(path, lambda grid: [[min(s + 2 * i, grid - 1) for i in range(4)] for s in starts])
    data, tok = from_dict(VideoDataConfig, {}, "data"), VideoTokenizerConfig(**tokenizer)
    inputs = torch.stack([eval_clip(c, tok.size, mean=data.mean, std=data.std, in_chans=3) for c in clips])
    with torch.no_grad():
        expected = model.encode(inputs).mean(dim=1)  # (N, D): no CLS token, mean of the tubelet tokens
    assert torch.allclose(result.features, expected, atol=1e-5)
    overlapping = embed_files(model, [path], window=1.2, hop=0.6, device="cpu")
    assert np.allclose(overlapping.start.numpy(), [0.0, 0.6, 1.2, 1.8, 2.4, 3.0])


def test_embeddings_file_layout_is_plain_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    model = _model(tokenizer={"img_size": 16, "patch_size": 8})
    checkpoint = export_safetensors(model, tmp_path / "mae.safetensors")
    paths = _images(tmp_path / "photos", 2)
    out = tmp_path / "f.safetensors"
    assert main(["embed", str(checkpoint), *map(str, paths), "-o", str(out), "--pool", "mean", "--no-progress"]) == 0
    with safe_open(str(out), framework="np") as f:
        metadata = f.metadata()
        assert f.get_tensor("features").shape == (2, 16) and f.get_tensor("file_index").tolist() == [0, 1]
    assert json.loads(metadata["files"]) == [str(p) for p in paths]
    assert metadata["format"] == "anymae-embeddings" and metadata["pool"] == "mean"
    assert metadata["checkpoint"] == str(checkpoint) and metadata["window"] == "null"


def test_corrupt_files_are_skipped_counted_and_the_other_rows_unchanged(tmp_path: Path, capsys) -> None:
    model = _model(tokenizer={"img_size": 16, "patch_size": 8})
    checkpoint = export_safetensors(model, tmp_path / "mae.safetensors")
    paths = _images(tmp_path / "photos", 4)
    # Sorted between img1 and img2, and last.
    corrupt = [tmp_path / "photos" / "img1b.jpg", tmp_path / "photos" / "zz.jpg"]
    clean_out, out = tmp_path / "clean.safetensors", tmp_path / "f.safetensors"
    assert main(["embed", str(checkpoint), *map(str, paths), "-o", str(clean_out), "--no-progress"]) == 0
    assert "from 4 files\n" in capsys.readouterr().out
    for path in corrupt:
        path.write_bytes(b"\xff\xd8 not a jpeg at all" * 10)

    assert main(["embed", str(checkpoint), str(tmp_path / "photos"), "-o", str(out), "--no-progress"]) == 0

    captured = capsys.readouterr()
    assert "from 4 files (2 unreadable files skipped)" in captured.out
    named = [line for line in captured.err.splitlines() if "unreadable" in line]
    assert len(named) == 2 and all(any(str(p) in m for m in named) for p in corrupt), captured.err
    assert all(line.startswith("anymae embed: warning: skipping unreadable sample (") for line in named), named
    assert not any("in its place" in line for line in named)  # skipped, not replaced
    clean, saved = read_embeddings(clean_out), read_embeddings(out)
    assert saved.files == clean.files == [str(p) for p in paths]
    assert saved.skipped == [str(p) for p in corrupt]
    assert torch.equal(saved.features, clean.features) and torch.equal(saved.file_index, clean.file_index)
