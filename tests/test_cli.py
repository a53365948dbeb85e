"""The ``anymae`` command line: configs, pretrain, visualize; user mistakes are one ``error:`` line, exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anymae.core.cli import main
from anymae.core.model.masking import random_masking, sample_mask

HEADER, PAD = 18, 4  # the reconstruction grid's title strip and cell padding (modalities/image/visualize.py)
FILL = (127, 127, 127)  # removed patches in the "masked" column: grey 0.5, as uint8(0.5 * 255)


def expected_input(path: Path, size: int) -> np.ndarray:
    """The image as the model sees it, in uint8, from PIL alone: the evaluation transform's shorter side to
    size / 0.875 (bicubic; torchvision truncates the longer side), centre crop (torchvision rounds the offsets)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        short = int(size / 0.875)
        new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        image = image.resize((new_w, new_h), Image.BICUBIC)
        left, top = round((new_w - size) / 2), round((new_h - size) / 2)
        return np.asarray(image.crop((left, top, left + size, top + size)))


def image_grid_panels(path: Path, first_original: np.ndarray, *, rows: int) -> np.ndarray:
    """The (rows, 4, H, W, 3) uint8 panels of an image reconstruction grid, read at the inputs' resolution.

    Columns by the documented layout (four square cells, ``PAD`` around each); the first row's top is where
    column 0 shows ``first_original`` best, so title or caption strips above or below the rows do not matter.
    """
    figure = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    size = first_original.shape[0]
    cell = (figure.shape[1] - PAD) // 4 - PAD
    zoom = cell // size
    assert zoom * size == cell, (figure.shape, size)

    def panel(top: int, column: int) -> np.ndarray:
        left = PAD + column * (cell + PAD)
        return figure[top : top + cell : zoom, left : left + cell : zoom]  # nearest zoom: every zoom-th pixel

    tops = range(figure.shape[0] - rows * (cell + PAD) + 1)
    top = min(tops, key=lambda y: np.abs(panel(y, 0) - first_original).mean())
    return np.stack([[panel(top + r * (cell + PAD), c) for c in range(4)] for r in range(rows)])


def assert_masked_panel_shows_kept_patches_and_fill(panels: np.ndarray, removed: torch.Tensor, *, patch: int) -> None:
    """Each row's "masked" column: the patches ``removed`` (rows, L) marks are all ``FILL``, the others exactly
    the input's (column 0); "reconstruction + visible" (column 3) is the input on kept patches and the
    reconstruction (column 2) on removed ones."""
    for (original, masked, recon, pasted), row_removed in zip(panels, removed, strict=True):
        grid_w = original.shape[1] // patch
        for k, is_removed in enumerate(row_removed.tolist()):
            y, x = (k // grid_w) * patch, (k % grid_w) * patch  # tokens in row-major order
            cut = np.s_[y : y + patch, x : x + patch]
            if is_removed:
                assert (masked[cut] == FILL).all(), k
                assert np.array_equal(pasted[cut], recon[cut]), k
            else:
                assert np.array_equal(masked[cut], original[cut]), k
                assert np.array_equal(pasted[cut], original[cut]), k


def _error_line(stderr: str, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"anymae {command}: error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


@pytest.fixture
def trained_checkpoint(tiny_config_file, tmp_path) -> Path:
    assert main(["pretrain", str(tiny_config_file), "train.epochs=1", "--no-progress"]) == 0
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoint-0001.pt"
    assert checkpoint.is_file()
    return checkpoint


def test_configs_lists_demo_image(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[0] == "demo_image" for line in out.splitlines() if line.strip())


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "pretrain" in capsys.readouterr().out


def test_pretrain_prints_heldout_loss_vs_baseline_and_paths(tiny_config_file, tmp_path, capsys):
    code = main(["pretrain", str(tiny_config_file), "train.epochs=1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    run_dir = tmp_path / "runs" / "tiny"
    assert "held-out masked-patch loss" in out
    assert "trivial baseline" in out
    for path in ("checkpoint-0001.pt", "metrics.jsonl", "config.yaml", "reconstruction.png"):
        assert str(run_dir / path) in out, path
        assert (run_dir / path).is_file()


def test_pretrain_bad_key_is_a_one_line_error_exit_1(tiny_config_file, capsys):
    code = main(["pretrain", str(tiny_config_file), "train.batch_sise=4"])
    captured = capsys.readouterr()
    assert code == 1
    line = _error_line(captured.err, "pretrain")
    assert "train.batch_sise" in line and "batch_size" in line


def test_pretrain_missing_config_file_is_a_one_line_error(tmp_path, capsys):
    code = main(["pretrain", str(tmp_path / "nope.yaml")])
    assert code == 1
    assert "nope.yaml" in _error_line(capsys.readouterr().err, "pretrain")


def test_visualize_writes_two_rows_of_four_columns(trained_checkpoint, tiny_image_folder, tmp_path, capsys):
    inputs = [
        str(next((tiny_image_folder / "train").rglob("*.jpg"))),
        str(next((tiny_image_folder / "train").rglob("*.png"))),
    ]
    out = tmp_path / "out.png"
    assert main(["visualize", str(trained_checkpoint), *inputs, "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as figure:
        assert figure.format == "PNG"
        width, height = figure.size
    cell = (width - PAD) / 4  # four square cells + padding per row
    assert cell == int(cell) and cell > PAD
    assert (height - HEADER - PAD) / cell == 2

    one = tmp_path / "one.png"
    assert main(["visualize", str(trained_checkpoint), inputs[0], "-o", str(one)]) == 0
    with Image.open(one) as figure:
        assert figure.size == (width, height - int(cell))

    # Content: column 0 is each input as the model sees it (PIL's bicubic may differ from torchvision's by a
    # level here and there). The removed patches are the model's: visualize draws its masks from the model's
    # masking seeded by --seed 0; 32 px images of 8 px patches at mask ratio 0.75 remove 16 - int(16 * 0.25) = 12.
    originals = [expected_input(Path(p), 32) for p in inputs]
    panels = image_grid_panels(out, originals[0], rows=2)
    for row, original in zip(panels, originals, strict=True):
        assert np.abs(row[0] - original).max() <= 2 and np.abs(row[0] - original).mean() < 0.5
    removed = sample_mask(random_masking, batch=2, grid=(4, 4), mask_ratio=0.75, device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert removed.sum(1).tolist() == [12, 12]
    assert_masked_panel_shows_kept_patches_and_fill(panels, removed, patch=8)


VIDEO_LABEL, VIDEO_PAD, VIDEO_FILL = 96, 2, 128  # the video grid's label column, padding and grey (video/visualize.py)


def video_grid_rows(path: Path, *, samples: int, frames: int, size: int, patch: int) -> np.ndarray:
    """The (samples, 3 rows, T, H, W, 3) cells of a video reconstruction grid (rows original / masked /
    reconstruction, one column per frame), read at the clips' resolution.

    Columns by the documented layout (label column, ``VIDEO_PAD`` around each cell). Rows are found where the
    layout holds: the first offset at which every sample's second row is a masked copy of its first (each
    ``patch`` x ``patch`` patch of every frame either equal to it or all fill, both kinds present), so strips
    above or below the grid do not matter; a figure with no such offset fails.
    """
    figure = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    cell = (figure.shape[1] - VIDEO_LABEL - VIDEO_PAD) // frames - VIDEO_PAD
    zoom, step = cell // size, cell + VIDEO_PAD
    assert zoom * size == cell, (figure.shape, size)

    def row(top: int) -> np.ndarray:  # (T, H, W, 3)
        lefts = [VIDEO_LABEL + VIDEO_PAD + f * step for f in range(frames)]
        return np.stack([figure[top : top + cell : zoom, x : x + cell : zoom] for x in lefts])

    def patches(pixels: np.ndarray) -> np.ndarray:  # (T, H, W) -> (T, L_spatial, p * p)
        g = size // patch
        return pixels.reshape(frames, g, patch, g, patch).transpose(0, 1, 3, 2, 4).reshape(frames, g * g, -1)

    def masked_copy(original: np.ndarray, masked: np.ndarray) -> bool:
        same, filled = patches((masked == original).all(-1)).all(-1), patches((masked == VIDEO_FILL).all(-1)).all(-1)
        return bool((same | filled).all() and same.any() and filled.any())

    def holds(top: int) -> bool:
        return all(masked_copy(row(top + 3 * i * step), row(top + (3 * i + 1) * step)) for i in range(samples))

    tops = [y for y in range(figure.shape[0] - 3 * samples * step + 1) if holds(y)]
    assert tops, f"{path}: no offset where each masked row is its original with whole patches filled"
    return np.stack([[row(tops[0] + (3 * i + r) * step) for r in range(3)] for i in range(samples)])


def test_visualize_video_shows_kept_tubes_of_the_input_and_grey_removed_ones(tmp_path, capsys):
    from anymae.core.build.models import build_model
    from anymae.core.config import resolve_model_config
    from anymae.core.io.checkpoint import write_checkpoint
    from anymae.modalities.video.decode import write_video

    raw = {"modality": "video", "tokenizer": {"num_frames": 4, "img_size": 32, "patch_size": 8, "tubelet_size": 2},
           "masking": "tube", "mask_ratio": 0.75, "embed_dim": 32, "depth": 1, "num_heads": 2,
           "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}  # fmt: skip
    torch.manual_seed(0)
    model = build_model(resolve_model_config(raw))
    checkpoint = write_checkpoint({"format": "anymae", "config": model.config, "model": model.state_dict()},
                                  tmp_path / "video.pt")  # fmt: skip
    rng = np.random.default_rng(0)
    clip = write_video(tmp_path / "clip.mp4", rng.integers(0, 256, size=(40, 48, 64, 3), dtype=np.uint8), fps=10)
    out = tmp_path / "video.png"
    assert main(["visualize", str(checkpoint), str(clip), str(clip), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out

    # Each masked row is its original row with whole 8 x 8 patches filled (found by video_grid_rows); tube
    # masking removes the same spatial positions in every frame: 16 - int(16 * 0.25) = 12 of the 16, and they
    # are the ones the model removed (visualize draws its masks from the model's masking, seeded by --seed 0).
    removed = sample_mask(model.masking, batch=2, grid=(2, 4, 4), mask_ratio=0.75, device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    rows = video_grid_rows(out, samples=2, frames=4, size=32, patch=8)
    for (original, masked, _), tubes in zip(rows, removed, strict=True):  # (T, H, W, 3) each, (2 * 16,)
        filled = (masked == VIDEO_FILL).all(-1)  # (T, H, W)
        assert np.array_equal(masked[~filled], original[~filled])  # kept pixels are the input's
        assert (filled == filled[:1]).all() and filled[0].sum() == 12 * 8 * 8
        expected = tubes.view(2, 4, 4)[0].repeat_interleave(8, 0).repeat_interleave(8, 1).numpy()  # (H, W)
        assert np.array_equal(filled[0], expected)
    # The original row is the clip as the model sees it: not the fill, and the same for the same file.
    assert np.array_equal(rows[0, 0], rows[1, 0]) and not (rows[0, 0] == VIDEO_FILL).all(-1).any()


def test_visualize_corrupt_image_is_a_one_line_error_exit_1(trained_checkpoint, tmp_path, capsys):
    bad = tmp_path / "corrupt.jpg"
    bad.write_text("not an image")
    capsys.readouterr()
    code = main(["visualize", str(trained_checkpoint), str(bad), "-o", str(tmp_path / "out.png")])
    assert code == 1
    assert "corrupt.jpg" in _error_line(capsys.readouterr().err, "visualize")
    assert not (tmp_path / "out.png").exists()


def test_visualize_missing_checkpoint_is_a_one_line_error(tmp_path, tiny_image_folder, capsys):
    image = str(next(tiny_image_folder.rglob("*.png")))
    code = main(["visualize", str(tmp_path / "missing.pt"), image])
    assert code == 1
    assert "missing.pt" in _error_line(capsys.readouterr().err, "visualize")


def test_console_script_reports_a_bad_key_without_traceback(tiny_config_file):
    script = Path(sys.executable).with_name("anymae")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "anymae.core.cli"]
    proc = subprocess.run(
        [*command, "pretrain", str(tiny_config_file), "train.batch_sise=4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    line = _error_line(proc.stderr, "pretrain")
    assert "did you mean 'batch_size'" in line


def test_visualize_with_an_encoder_only_checkpoint_is_a_one_line_error(tmp_path, capsys):
    from anymae.core.build.models import build_model
    from anymae.core.config import resolve_model_config

    cfg = resolve_model_config(
        {"tokenizer": {"img_size": 32, "patch_size": 16}, "embed_dim": 768, "depth": 1, "num_heads": 12}
    )
    model = build_model(cfg, with_decoder=False)
    official = {"cls_token": model.encoder.cls_token.detach(), "pos_embed": model.encoder.pos_embed}
    for key, value in model.state_dict().items():
        if key.startswith("tokenizer.proj."):
            official[key.replace("tokenizer.proj.", "patch_embed.proj.")] = value
        elif key.startswith("encoder.") and key != "encoder.cls_token":
            official[key.removeprefix("encoder.")] = value
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": official}, path)
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), "red").save(image)

    code = main(["visualize", str(path), str(image), "-o", str(tmp_path / "out.png")])

    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "no decoder" in err and len(err.splitlines()) == 1


def test_export_writes_safetensors_that_load_model_reads_back(trained_checkpoint, tmp_path, capsys):
    from safetensors import safe_open

    from anymae.core import load_model

    out = tmp_path / "model.safetensors"
    assert main(["export", str(trained_checkpoint), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:  # plain tensors + JSON metadata, no pickle
        assert f.metadata()["format"] == "anymae" and "encoder.cls_token" in list(f.keys())
    original, exported = load_model(trained_checkpoint).eval(), load_model(out).eval()
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    assert torch.equal(original(x, noise=noise)[0], exported(x, noise=noise)[0])


def test_safetensors_without_anymae_metadata_is_a_one_line_error(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    assert main(["export", str(tmp_path / "other.safetensors"), str(tmp_path / "x.safetensors")]) == 1
    assert "no anymae config in its metadata" in _error_line(capsys.readouterr().err, "export")
