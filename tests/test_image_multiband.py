"""Images beyond 8-bit RGB (issue 17): multi-band TIFF, .npy/.npz arrays and 16-bit PNG at full precision,
per-band statistics, the paper's augmentation on float tensors, N-band figures, and the whole CLI on them."""

from __future__ import annotations

import json
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from anymae.core import BadSampleError, DataError, SafeDataset
from anymae.core.cli import main
from anymae.core.config import ConfigError, from_dict, load_config
from anymae.core.evaluate.classification import load_classifier
from anymae.modalities.image.data import ImageReader, pretrain_transform, read_bands
from anymae.modalities.image.device_decode import EncodedImageFiles
from anymae.modalities.image.modality import ImageDataConfig, ImageModality, ImageTokenizerConfig
from anymae.modalities.image.tokenizer import PatchTokenizer2d

BANDS = 13
H, W = 24, 28  # stored files; the model sees 16 x 16 crops


# --- writing test files ---------------------------------------------------------------------------------
def _bands(seed: int, count: int = BANDS) -> np.ndarray:
    """(count, H, W) uint16: per-band level + gradients + noise, values 500..~7000 (Sentinel-2-like)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    level = rng.uniform(500, 3000, size=(count, 1, 1))
    slope_x, slope_y = rng.uniform(200, 2000, size=(2, count, 1, 1))
    noise = rng.integers(0, 50, size=(count, H, W))
    return (level + slope_x * x / W + slope_y * y / H + noise).astype(np.uint16)


def _write_tiff(path: Path, bands: np.ndarray, layout: str) -> Path:
    """``planar``: one plane per band (SYX, as GDAL's band-sequential GeoTIFF); ``interleaved``: pixel by pixel
    (YXS); ``pages``: one page per band (QYX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "planar":
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="separate")
    elif layout == "interleaved":
        tifffile.imwrite(path, bands.transpose(1, 2, 0), photometric="minisblack", planarconfig="contig")
    else:
        tifffile.imwrite(path, bands)
    return path


def _write_png16(path: Path, bands: np.ndarray) -> Path:
    """(C, H, W) uint16 -> a 16-bit PNG written from the PNG specification (IHDR, filter-0 rows in one zlib
    IDAT, IEND): grey, grey + alpha, RGB or RGBA for C = 1, 2, 3, 4."""
    c, h, w = bands.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = bands.transpose(1, 2, 0).astype(">u2").reshape(h, w * c)  # big-endian samples, interleaved
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def _save(path: Path, bands: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, image=bands, acquired=np.array([2021, 6, 1]))
    else:
        np.save(path, bands)
    return path


@pytest.fixture
def multiband_root(tmp_path: Path) -> Path:
    """root/{train,val}/{fields,water}/ of 13-band uint16 files: TIFFs in three layouts, .npy and .npz."""
    root = tmp_path / "sentinel"
    train, val = root / "train", root / "val"
    _write_tiff(train / "fields" / "f0.tif", _bands(0), "planar")
    _write_tiff(train / "fields" / "f1.tif", _bands(1), "interleaved")
    _save(train / "fields" / "f2.npy", _bands(2))
    _save(train / "water" / "w0.npz", _bands(3) // 4)
    _write_tiff(train / "water" / "w1.tif", _bands(4) // 4, "pages")
    _save(train / "water" / "w2.npy", _bands(5) // 4)
    _write_tiff(val / "fields" / "v0.tif", _bands(6), "planar")
    _save(val / "water" / "v1.npy", _bands(7) // 4)
    return root


def _stored(root: Path) -> dict[Path, np.ndarray]:
    """What the fixture wrote, re-generated: the reference for every reader."""
    files = {
        "train/fields/f0.tif": _bands(0),
        "train/fields/f1.tif": _bands(1),
        "train/fields/f2.npy": _bands(2),
        "train/water/w0.npz": _bands(3) // 4,
        "train/water/w1.tif": _bands(4) // 4,
        "train/water/w2.npy": _bands(5) // 4,
    }
    return {root / name: bands for name, bands in files.items()}


def _image_stats(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["image-stats", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)["data"]


def _tiny_pretrain_config(tmp_path: Path, root: Path, mean: list[float], std: list[float]) -> dict:
    return {
        "name": "tiny_multiband",
        "model": {
            "modality": "image",
            "tokenizer": {"img_size": 16, "patch_size": 4, "in_chans": BANDS},
            "mask_ratio": 0.75,
            "embed_dim": 32,
            "depth": 1,
            "num_heads": 2,
            "decoder_embed_dim": 16,
            "decoder_depth": 1,
            "decoder_num_heads": 2,
        },
        "data": {"root": str(root), "heldout_split": "val", "mean": mean, "std": std, "rgb_bands": [3, 2, 1]},
        "optim": {"lr": 1.0e-3, "warmup_epochs": 0},
        "train": {
            "epochs": 1,
            "batch_size": 2,
            "num_workers": 0,
            "pin_memory": False,
            "device": "cpu",
            "output_dir": str(tmp_path / "runs"),
            "heldout_batches": 1,
            "figure_samples": 2,
        },
    }


def _metrics(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


# --- acceptance: the whole CLI on 13-band files ---------------------------------------------------------
def test_multiband_files_pretrain_visualize_finetune_linprobe_and_evaluate(tmp_path, multiband_root, capsys):
    stats = _image_stats(capsys, str(multiband_root / "train"))
    assert len(stats["mean"]) == BANDS and len(stats["std"]) == BANDS
    config = tmp_path / "tiny_multiband.yaml"
    config.write_text(yaml.safe_dump(_tiny_pretrain_config(tmp_path, multiband_root, stats["mean"], stats["std"])))

    assert main(["pretrain", str(config), "--no-progress"]) == 0
    run = tmp_path / "runs" / "tiny_multiband"
    checkpoint = sorted(run.glob("checkpoint-*.pt"))[-1]
    assert list(run.rglob("*.png")), "no reconstruction figure in the run folder"

    figure = tmp_path / "recon.png"
    inputs = [str(multiband_root / "val" / "fields" / "v0.tif"), str(multiband_root / "val" / "water" / "v1.npy")]
    assert main(["visualize", str(checkpoint), *inputs, "-o", str(figure)]) == 0
    with Image.open(figure) as im:
        assert im.mode == "RGB" and im.height > 2 * im.width / 4 * 0.9  # two rows of four square cells

    common = [
        f"data.root={multiband_root}",
        "data.heldout_split=val",
        f"data.mean={stats['mean']}",
        f"data.std={stats['std']}",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.pin_memory=false",
        "train.device=cpu",
        f"train.output_dir={tmp_path / 'cls'}",
        "--no-progress",
    ]
    ft = ["finetune", "demo_image_finetune", f"finetune.checkpoint={checkpoint}", "finetune.auto_augment=null"]
    ft.append("train.epochs=1")
    assert main([*ft, *common]) == 0
    lp = ["linprobe", "demo_image_linprobe", f"linprobe.checkpoint={checkpoint}"]
    assert main([*lp, *common]) == 0
    files = [multiband_root / "val" / "fields" / "v0.tif", multiband_root / "val" / "water" / "v1.npy"]
    labels = torch.tensor([0, 1])  # fields, water
    # The plugin's evaluation inputs of the 13-band files: those read and transformed here by hand.
    data = ImageDataConfig(root=str(multiband_root), mean=tuple(stats["mean"]), std=tuple(stats["std"]))
    plugin = ImageModality().load_inputs(files, data, ImageTokenizerConfig(img_size=32, patch_size=4, in_chans=BANDS))
    reference = torch.stack([_reference_eval_input(f, stats, 32) for f in files])
    torch.testing.assert_close(plugin, reference, rtol=0, atol=1e-4)
    for name in ("demo_image_finetune", "demo_image_linprobe"):
        path = tmp_path / "cls" / name / "checkpoint-last.pt"
        capsys.readouterr()
        assert main(["eval", str(path), "--device", "cpu"]) == 0
        line = capsys.readouterr().out.strip()
        match = re.match(r"heldout: 2 samples .*top-1 (\d+\.\d+)%.*loss (\d+\.\d+)", line)
        assert match, line
        # The printed numbers are the classifier's on the 13-band files read and transformed here by hand.
        classifier = load_classifier(path).eval()
        size = classifier.config["model"]["tokenizer"]["img_size"]
        inputs = torch.stack([_reference_eval_input(f, stats, size) for f in files])
        with torch.no_grad():
            logits = classifier(inputs)
        loss = torch.nn.functional.cross_entropy(logits, labels).item()
        top1 = 100 * (logits.argmax(1) == labels).float().mean().item()
        assert (float(match[1]), float(match[2])) == (pytest.approx(top1, abs=0.005), pytest.approx(loss, abs=5e-5))


def _reference_eval_input(path: Path, stats: dict, size: int) -> torch.Tensor:
    """The official evaluation transform written out for a stored 13-band uint16 file (24 x 28) and a ``size``-px
    model: values / 65535, shorter side to int(size / 0.875) (bicubic, antialiased), centre ``size`` crop, per band
    (x - mean) / std. Read with tifffile / numpy, not the image plugin's reader."""
    bands = tifffile.imread(path) if path.suffix == ".tif" else np.load(path)
    assert bands.shape == (BANDS, H, W) and bands.dtype == np.uint16
    short = int(size / 0.875)
    long = int(short * W / H)  # torchvision's Resize(int): the longer side keeps the aspect ratio, truncated
    x = torch.from_numpy(bands.astype(np.float32) / 65535)[None]  # (1, C, H, W)
    x = torch.nn.functional.interpolate(x, size=(short, long), mode="bicubic", align_corners=False, antialias=True)
    top, left = round((short - size) / 2), round((long - size) / 2)
    x = x[0, :, top : top + size, left : left + size]
    mean, std = torch.tensor(stats["mean"])[:, None, None], torch.tensor(stats["std"])[:, None, None]
    return (x - mean) / std


# --- full precision ---------------------------------------------------------------------------------------
def test_sixteen_bit_values_that_8_bits_would_merge_are_recovered_exactly(tmp_path):
    values = np.array([1000, 1001, 1002], dtype=np.uint16)  # 1000/257 .. 1002/257 all round to 4 in 8 bits
    assert len({round(int(v) / 257) for v in values}) == 1
    constant = np.broadcast_to(values[:, None, None], (3, H, W)).copy()
    rgb_png = _write_png16(tmp_path / "flat" / "rgb16.png", constant)
    with Image.open(rgb_png) as im:  # PIL: the writer is valid, and PIL itself keeps 8 of the 16 bits
        assert np.asarray(im.convert("RGB"))[0, 0].tolist() == (values >> 8).tolist()
    tif = _write_tiff(tmp_path / "flat" / "rgb16.tif", constant, "interleaved")
    npy = _save(tmp_path / "flat" / "rgb16.npy", constant)

    reader = ImageReader(in_chans=3)
    tok = ImageTokenizerConfig(img_size=16, patch_size=4, in_chans=3)
    data = ImageDataConfig(root=str(tmp_path), train_split="flat", heldout_split=None, mean=(0.5,) * 3, std=(0.2,) * 3)
    for path in (rgb_png, tif, npy):
        x = reader(path)
        assert x.dtype == torch.float32 and x.shape == (3, H, W)
        expected = constant.astype(np.float32) / np.float32(65535)  # numpy's float32 quotient
        assert np.array_equal(x.numpy(), expected), path
        assert torch.equal(torch.round(x[:, 0, 0] * 65535), torch.tensor([1000.0, 1001.0, 1002.0]))

    # Through the model's input pipelines: the evaluation transform and the pre-training dataset.
    denormalize = lambda t: (t * 0.2 + 0.5) * 65535  # noqa: E731
    batch = ImageModality().load_inputs([rgb_png, tif, npy], data, tok)
    train = SafeDataset(ImageModality().build_dataset(data, tok, split="train"), seed=0)
    for x in [*batch, *(train[i]["input"] for i in range(len(train)))]:
        recovered = denormalize(x).mean(dim=(1, 2))
        assert torch.allclose(recovered, torch.tensor([1000.0, 1001.0, 1002.0]), atol=0.05), recovered


def test_grey_16_bit_png_keeps_every_value(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, size=(H, W), dtype=np.uint16)
    path = tmp_path / "scan.png"
    Image.fromarray(grey).save(path)  # PIL writes 16-bit grey PNG (mode I;16)
    x = ImageReader(in_chans=1)(path)
    assert x.shape == (1, H, W)
    assert np.array_equal(np.rint(x[0].numpy().astype(np.float64) * 65535).astype(np.uint16), grey)


def test_value_range_and_bands_scale_and_select_as_configured(tmp_path):
    stored = _bands(0)
    path = _write_tiff(tmp_path / "s2.tif", stored, "planar")
    x = ImageReader(in_chans=3, bands=(3, 2, 1), value_range=(0.0, 10000.0))(path)
    expected = (stored[[3, 2, 1]].astype(np.float64) / 10000).astype(np.float32)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6, atol=0)
    signed = _save(tmp_path / "ct.npy", np.array([[[-32768, 0, 32767]]], dtype=np.int16))
    np.testing.assert_allclose(ImageReader(in_chans=1)(signed).numpy().ravel(), [0.0, 32768 / 65535, 1.0], rtol=1e-6)
    floats = _save(tmp_path / "f.npy", np.array([[[-3.5, 0.25, 70.0]]], dtype=np.float32))
    assert ImageReader(in_chans=1)(floats).numpy().ravel().tolist() == [-3.5, 0.25, 70.0]  # floats as stored


def test_tiff_and_array_axis_conventions_give_bands_first(tmp_path, multiband_root):
    for path, bands in _stored(multiband_root).items():
        assert np.array_equal(read_bands(path), bands), path
    hwc = _save(tmp_path / "hwc.npy", _bands(9).transpose(1, 2, 0))
    assert np.array_equal(read_bands(hwc, array_layout="HWC"), _bands(9))
    for bad, match in (
        (_save(tmp_path / "cube.npy", np.zeros((2, 3, 4, 5), np.uint16)), r"shape \(2, 3, 4, 5\)"),
        (tmp_path / "two.npz", "name the image 'image'"),
        (tmp_path / "junk.tif", "cannot read TIFF"),
    ):
        if bad.suffix == ".npz":
            np.savez(bad, a=np.zeros((4, 4)), b=np.zeros((4, 4)))
        elif bad.suffix == ".tif":
            bad.write_bytes(b"II*\x00 not a tiff")
        with pytest.raises(BadSampleError, match=match) as exc:
            read_bands(bad)
        assert bad.name in str(exc.value)


# --- bad samples ------------------------------------------------------------------------------------------
def test_file_with_the_wrong_band_count_is_named_counted_and_skipped(tmp_path, multiband_root, capsys):
    odd = _write_tiff(multiband_root / "train" / "fields" / "odd.tif", _bands(8, count=12), "planar")
    with pytest.raises(BadSampleError, match=r"odd\.tif has 12 bands, expected 13 \(model\.tokenizer\.in_chans\)"):
        ImageReader(in_chans=BANDS)(odd)

    stats = _image_stats(capsys, str(multiband_root / "train" / "water"))
    raw = _tiny_pretrain_config(tmp_path, multiband_root, stats["mean"], stats["std"])
    raw["train"]["max_bad_fraction"] = 0.5
    raw["data"]["repeats"] = 2  # 14 items: odd.tif twice
    config = tmp_path / "tiny_multiband.yaml"
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["pretrain", str(config), "--no-progress"]) == 0
    messages = [line for line in capsys.readouterr().err.splitlines() if "odd.tif" in line]
    assert messages and all("12 bands, expected 13" in m for m in messages), messages
    assert all(m.startswith("anymae pretrain: warning: skipping unreadable sample") for m in messages), messages
    logged = _metrics(tmp_path / "runs" / "tiny_multiband" / "metrics.jsonl")
    counts = [row["bad_samples"] for row in logged if "bad_samples" in row]
    assert counts and counts[-1] == 2  # both listings of odd.tif, counted by the trainer


def test_selecting_a_band_the_file_lacks_names_the_file_and_the_band(tmp_path):
    path = _save(tmp_path / "four.npy", _bands(0, count=4))
    with pytest.raises(BadSampleError, match=r"four\.npy has 4 bands, but data\.bands asks for band 7"):
        ImageReader(in_chans=2, bands=(0, 7))(path)


# --- image-stats ------------------------------------------------------------------------------------------
def test_image_stats_equals_numpy_per_band_mean_and_std(multiband_root, capsys):
    files = _stored(multiband_root)
    odd = _write_tiff(multiband_root / "train" / "water" / "odd.tif", _bands(8, count=12), "planar")
    pixels = np.concatenate([b.reshape(BANDS, -1) for b in files.values()], axis=1).astype(np.float64)

    capsys.readouterr()
    assert main(["image-stats", str(multiband_root / "train")]) == 0
    captured = capsys.readouterr()
    assert "anymae image-stats: warning: " in captured.err and odd.name in captured.err
    stats = yaml.safe_load(captured.out)["data"]
    np.testing.assert_allclose(stats["mean"], (pixels / 65535).mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], (pixels / 65535).std(axis=1), rtol=1e-6)

    # Two bands selected: the 12-band file has them, so it counts too.
    stats = _image_stats(capsys, str(multiband_root / "train"), "--value-range", "0", "10000", "--bands", "3", "2")
    assert stats["bands"] == [3, 2] and stats["value_range"] == [0, 10000]
    selected = np.concatenate([pixels[[3, 2]], _bands(8, count=12)[[3, 2]].reshape(2, -1)], axis=1) / 10000
    np.testing.assert_allclose(stats["mean"], selected.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], selected.std(axis=1), rtol=1e-6)


def test_image_stats_of_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["image-stats", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err


# --- augmentation on float tensors --------------------------------------------------------------------------
def test_pretrain_augmentation_crops_every_band_alike_without_quantising():
    # band b = gradient * (b + 1) / 1000: tiny values, ~1000 distinct levels in a band's 0..0.013 range
    y, x = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
    base = (x * 48 + y) / (40 * 48)
    image = torch.stack([base * (b + 1) / 1000 for b in range(BANDS)])  # (13, 40, 48)
    transform = pretrain_transform((16, 16), scale=(0.2, 1.0), hflip=True, mean=(0.0,) * BANDS, std=(1.0,) * BANDS)
    torch.manual_seed(3)
    out = transform(image)
    assert out.shape == (BANDS, 16, 16) and out.dtype == torch.float32
    for b in range(BANDS):  # the same crop and flip for every band: band b is band 0 times (b + 1)
        torch.testing.assert_close(out[b], out[0] * (b + 1), rtol=1e-5, atol=1e-9)
    assert out[0].unique().numel() > 200  # 8 bits over 0..0.013 would leave at most 4 levels


def test_auto_augment_on_full_precision_images_is_refused_naming_the_key(tmp_path, multiband_root):
    modality = ImageModality()
    augment = {"recipe": "finetune", "auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25}
    tok = ImageTokenizerConfig(img_size=16, patch_size=4, in_chans=BANDS)
    data = ImageDataConfig(root=str(multiband_root), heldout_split="val", mean=(0.1,) * BANDS, std=(0.1,) * BANDS)
    with pytest.raises(DataError, match=r"finetune\.auto_augment"):
        modality.build_labelled_dataset(data, tok, split="train", augment=augment)

    # RGB config: a 16-bit PNG among 8-bit files is refused by itself, naming the file and the key.
    root = tmp_path / "mixed"
    for cls in ("a", "b"):
        _write_png16(root / "train" / cls / f"{cls}.png", _bands(0, count=3))
    rgb = ImageDataConfig(root=str(root), heldout_split=None)
    dataset = modality.build_labelled_dataset(
        rgb, ImageTokenizerConfig(img_size=16, patch_size=4), split="train", augment=augment
    )
    with pytest.raises(BadSampleError, match=r"a\.png: finetune\.auto_augment"):
        dataset[0]


# --- figures ------------------------------------------------------------------------------------------------
def test_figure_is_a_composite_of_rgb_bands_each_stretched_over_mean_plus_minus_2_std(tmp_path):
    tok = PatchTokenizer2d(img_size=(16, 16), patch_size=4, in_chans=BANDS, embed_dim=8)
    z = torch.linspace(-3, 3, BANDS)  # normalized value of each band, constant over the image
    inputs = z.view(1, BANDS, 1, 1).expand(1, BANDS, 16, 16).clone()
    pred, mask = tok.patchify(inputs), torch.zeros(1, 16)
    data = ImageDataConfig(mean=tuple(range(1, 14)), std=(0.5,) * BANDS, rgb_bands=(3, 2, 1))
    path = ImageModality().render_reconstruction(
        inputs=inputs, pred=pred, mask=mask, tokenizer=tok, data=data, path=tmp_path / "f.png"
    )
    with Image.open(path) as im:
        pixel = np.asarray(im.convert("RGB"))[100, 20]  # inside the first (original) cell of the only row
    # de-normalized x = mean + std z; drawn as (x - (mean - 2 std)) / (4 std) = (z + 2) / 4, clipped to 0..1
    expected = [round(255 * min(max((float(z[b]) + 2) / 4, 0), 1)) for b in (3, 2, 1)]
    assert pixel.tolist() == expected


# --- configuration ------------------------------------------------------------------------------------------
def test_gpu_decode_refuses_full_precision_data(tmp_path, multiband_root):
    tok = ImageTokenizerConfig(img_size=16, patch_size=4, in_chans=BANDS)
    data = ImageDataConfig(root=str(multiband_root), decode="gpu", mean=(0.1,) * BANDS, std=(0.1,) * BANDS)
    with pytest.raises(DataError, match=r"data\.decode=gpu .*in_chans=13.*set data\.decode=cpu"):
        ImageModality().build_dataset(data, tok, split="train")
    png = _write_png16(tmp_path / "p.png", _bands(0, count=3))
    files = EncodedImageFiles([png], size=(16, 16), scale=(0.2, 1.0), hflip=True, in_chans=3)
    with pytest.raises(BadSampleError, match=r"p\.png is a 16-bit PNG.*set data\.decode=cpu"):
        files[0]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"bands": [0, 1]}, "data.bands selects 2 bands"),
        ({"rgb_bands": [0, 1, 13]}, "data.rgb_bands"),
        ({"mean": [0.5] * 3, "std": [0.2] * 3}, "anymae image-stats"),
    ],
)
def test_data_keys_that_disagree_with_in_chans_are_named(multiband_root, data, match):
    raw = {"root": str(multiband_root), "mean": [0.1] * BANDS, "std": [0.1] * BANDS, **data}
    tok = ImageTokenizerConfig(img_size=16, patch_size=4, in_chans=BANDS)
    with pytest.raises(DataError, match=re.escape(match)):
        ImageModality().build_dataset(from_dict(ImageDataConfig, raw, "data"), tok, split="train")


@pytest.mark.parametrize("data", [{"value_range": [10, 10]}, {"bands": [1, 1]}, {"bands": [-1]}, {"rgb_bands": [0, 1]}])
def test_invalid_band_keys_are_refused_when_the_config_is_read(data):
    with pytest.raises(ConfigError, match=next(iter(data))):
        from_dict(ImageDataConfig, data, "data")


def test_sentinel2_config_has_satmae_published_values():
    cfg = load_config("satmae_vit_large_sentinel2")
    tok, train = cfg.model.tokenizer, cfg.train
    assert (tok.img_size, tok.patch_size, tok.in_chans) == (96, 8, 13)
    assert (cfg.model.mask_ratio, cfg.optim.blr, cfg.optim.warmup_epochs, train.epochs) == (0.75, 1e-4, 20, 200)
    assert train.batch_size * train.accum_iter * 8 == 4096  # SatMAE: --batch_size 16 --accum_iter 32 on 8 GPUs
    # SatMAE util/datasets.py (SentinelIndividualImageDataset), in stored units; the config is in reflectance.
    satmae_mean = [1370.19151926, 1184.3824625, 1120.77120066, 1136.26026392, 1263.73947144, 1645.40315151,
                   1846.87040806, 1762.59530783, 1972.62420416, 582.72633433, 14.77112979, 1732.16362238,
                   1247.91870117]  # fmt: skip
    satmae_std = [633.15169573, 650.2842772, 712.12507725, 965.23119807, 948.9819932, 1108.06650639,
                  1258.36394548, 1233.1492281, 1364.38688993, 472.37967789, 14.3114637, 1310.36996126,
                  1087.6020813]  # fmt: skip
    assert cfg.data.value_range == (0.0, 10000.0)
    np.testing.assert_allclose(np.array(cfg.data.mean) * 10000, satmae_mean, rtol=1e-8)
    np.testing.assert_allclose(np.array(cfg.data.std) * 10000, satmae_std, rtol=1e-8)


def test_eight_bit_photographs_still_take_the_pil_path(tiny_image_folder):
    photo = next((tiny_image_folder / "train").rglob("*.jpg"))
    assert isinstance(ImageReader(in_chans=3)(photo), Image.Image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = ImageReader(in_chans=3, bands=(2, 1, 0))(photo)  # bands asked for: the file's bands, scaled / 255
    with Image.open(photo) as im:
        rgb = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(x.numpy(), rgb[[2, 1, 0]].astype(np.float32) / np.float32(255))
