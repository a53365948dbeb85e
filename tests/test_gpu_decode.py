"""``data.decode: gpu`` run on the CPU (``device="cpu"``): the device path's crops equal the CPU path's for the
same sample seeds, a run trains and is reproducible, and corrupt JPEGs are still counted bad samples."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import make_image, write_image
from PIL import Image
from test_composite import composite_raw, write_pairs
from timm.data.constants import IMAGENET_DEFAULT_STD
from torchvision.io import decode_jpeg

from anymae.core import pretrain
from anymae.core.build.composite_data import CompositeModality
from anymae.core.config import resolve_config
from anymae.core.data.samples import DataError, SafeDataset
from anymae.modalities.image.device_decode import DeviceDecode, EncodedImageFiles
from anymae.modalities.image.modality import ImageDataConfig, ImageModality, ImageTokenizerConfig
from anymae.plugins import get_registry

TOKENIZER = ImageTokenizerConfig(img_size=64, patch_size=8)
CPU = torch.device("cpu")


def _photos(root: Path) -> list[Path]:
    """RGB JPEG, grey JPEG, CMYK JPEG (decoded by PIL in the worker) and PNG, larger than the crop."""
    images = [make_image(i, size=(160, 120)) for i in range(4)]
    return [
        write_image(root / "train" / "a_rgb.jpg", images[0]),
        write_image(root / "train" / "b_grey.jpg", images[1].convert("L")),
        write_image(root / "train" / "c_cmyk.jpg", images[2].convert("CMYK")),
        write_image(root / "train" / "d_lossless.png", images[3]),
    ]


def _huffman_corrupt_jpeg(path: Path) -> Path:
    """A JPEG whose header and end marker are intact (the worker passes it) but whose Huffman table is
    invalid: only decoding finds it (libjpeg: "Bogus Huffman table definition")."""
    write_image(path, make_image(7, size=(48, 40)))
    raw = bytearray(path.read_bytes())
    dht = raw.find(b"\xff\xc4")  # marker, 2 length bytes, class/id byte, then 16 code counts
    raw[dht + 5 : dht + 21] = b"\xff" * 16  # counts summing past 256
    path.write_bytes(bytes(raw))
    return path


def _truncated_jpeg(path: Path) -> Path:
    write_image(path, make_image(8, size=(48, 40)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_device_crops_equal_the_cpu_path_crops_for_the_same_sample_seeds(tmp_path):
    files = _photos(tmp_path)
    modality = ImageModality()
    cpu_data = ImageDataConfig(root=str(tmp_path), heldout_split=None)
    gpu_data = ImageDataConfig(root=str(tmp_path), heldout_split=None, decode="gpu")
    cpu_set = SafeDataset(modality.build_dataset(cpu_data, TOKENIZER, split="train"), seed=5)
    gpu_set = SafeDataset(modality.build_dataset(gpu_data, TOKENIZER, split="train"), seed=5)
    stage = modality.device_transform(gpu_data, TOKENIZER, device=CPU)
    keys = [(epoch, index) for epoch in range(4) for index in range(len(files))]
    batch = stage.collate([gpu_set[key] for key in keys])
    encoded = batch["input"]
    assert [shape is None for shape in encoded.shapes[:4]] == [True, True, False, False]  # JPEG bytes vs pixels
    assert len(set(encoded.boxes)) == len(keys) and 0 < sum(encoded.flips) < len(keys)  # the draws vary

    expected = torch.stack([cpu_set[key]["input"] for key in keys])  # PIL decode + PIL bicubic
    got = stage(batch)
    assert got.shape == expected.shape == (len(keys), 3, 64, 64)
    pixels = (got - expected).abs() * torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1) * 255
    # Same boxes and flips: only the decoders' and resizers' rounding differs (measured: max 1 level, mean 0.003).
    assert pixels.max() <= 1.5, pixels.max()
    assert pixels.mean() < 0.05, pixels.mean()


def test_device_decode_matches_a_direct_torchvision_reference(tmp_path):
    path = _photos(tmp_path)[0]
    stage = DeviceDecode(size=(64, 64), in_chans=3, mean=(0.0,) * 3, std=(1.0,) * 3, device=CPU)
    image = decode_jpeg(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8))
    box = (10, 20, 90, 100)
    expected = torch.nn.functional.interpolate(
        image[None, :, 10:100, 20:120].float(), size=(64, 64), mode="bicubic", antialias=True, align_corners=False
    )
    got = stage.augment(image, box, flip=True).float()
    assert (got - expected.round().clamp(0, 255)[0].flip(-1)).abs().max() <= 1


def test_gpu_decode_pretraining_trains_on_cpu_and_does_not_depend_on_workers(tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    raw["data"]["decode"] = "gpu"
    raw["train"]["epochs"] = 1
    losses = []
    for workers in (0, 1):
        raw["train"]["num_workers"] = workers
        result = pretrain(resolve_config(copy.deepcopy(raw)), progress=False)
        losses.append(result.train_loss)
    assert math.isfinite(losses[0])
    assert losses[0] == losses[1]  # crops drawn in the workers under per-sample seeds: identical runs


def test_truncated_jpeg_is_caught_in_the_worker_and_substituted(tmp_path):
    files = _photos(tmp_path)
    bad = _truncated_jpeg(tmp_path / "train" / "b_truncated.jpg")
    dataset = EncodedImageFiles([files[0], bad, files[1]], size=(64, 64), scale=(0.2, 1.0), hflip=True, in_chans=3)
    with pytest.warns(UserWarning, match="b_truncated.jpg"):
        item = SafeDataset(dataset)[1]
    assert item["bad"] == 1 and item["input"].path == str(files[1])  # the next readable file stands in


def test_jpeg_only_the_decoder_rejects_is_replaced_in_the_batch_and_marked_bad(tmp_path):
    files = _photos(tmp_path)
    bad = _huffman_corrupt_jpeg(tmp_path / "train" / "a_huffman.jpg")
    with pytest.raises(RuntimeError):
        decode_jpeg(torch.frombuffer(bytearray(bad.read_bytes()), dtype=torch.uint8))
    with pytest.raises(OSError), Image.open(bad) as im:
        im.load()  # the CPU path (PIL) rejects it too
    dataset = EncodedImageFiles([files[0], bad, files[1]], size=(64, 64), scale=(0.2, 1.0), hflip=True, in_chans=3)
    safe = SafeDataset(dataset, seed=1)
    stage = DeviceDecode(size=(64, 64), in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3, device=CPU)
    batch = stage.collate([safe[i] for i in range(3)])
    assert batch["bad"].tolist() == [0, 0, 0]  # the worker could not tell
    with pytest.warns(UserWarning, match="a_huffman.jpg"):
        x = stage(batch)
    assert batch["bad"].tolist() == [0, 1, 0]
    assert torch.equal(x[1], x[2])  # the next readable image of the batch stands in
    assert not torch.equal(x[0], x[2])

    only_bad = stage.collate([safe[1], safe[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="none of the 2 images of a batch could be decoded"):
            stage(only_bad)


def test_corrupt_jpegs_are_counted_bad_samples_in_a_gpu_decode_run(tiny_image_folder, tiny_config_dict):
    # 6 good + 2 bad files with batch 4: every file is drawn once per epoch. The truncated file is caught in the
    # worker, the Huffman-corrupt one on the device; the file after each (in sorted order) is readable.
    for name in ("cats2.jpg", "dogs3.png"):
        next(tiny_image_folder.rglob(name)).unlink()
    truncated = _truncated_jpeg(tiny_image_folder / "train" / "cats" / "zz_truncated.jpg")
    huffman = _huffman_corrupt_jpeg(tiny_image_folder / "train" / "dogs" / "zz_huffman.jpg")
    raw = copy.deepcopy(tiny_config_dict)
    raw["data"]["decode"] = "gpu"
    raw["train"]["max_bad_fraction"] = 0.5
    with pytest.warns(UserWarning) as record:
        result = pretrain(resolve_config(raw), progress=False)
    messages = " ".join(str(w.message) for w in record)
    assert truncated.name in messages and huffman.name in messages
    epochs = [r for r in map(json.loads, result.metrics.read_text().splitlines()) if "epoch_bad_samples" in r]
    assert [r["epoch_bad_samples"] for r in epochs] == [2, 2]
    assert math.isfinite(result.train_loss)


def test_gpu_decode_is_refused_for_labelled_data(tiny_image_folder):
    data = ImageDataConfig(root=str(tiny_image_folder), decode="gpu")
    with pytest.raises(DataError, match=r"data\.decode=gpu is for pre-training"):
        ImageModality().build_labelled_dataset(data, TOKENIZER, split="train", augment=None)


def test_cpu_decode_has_no_device_transform(tiny_image_folder):
    assert ImageModality().device_transform(ImageDataConfig(root=str(tiny_image_folder)), TOKENIZER, device=CPU) is None


def test_a_composite_part_decodes_on_the_device_and_the_run_does_not_depend_on_workers(tmp_path):
    root = tmp_path / "data"
    write_pairs(root, 8)
    write_pairs(root, 2, split="heldout")
    losses = []
    for workers in (0, 1):
        raw = composite_raw(tmp_path, root, epochs=1, num_workers=workers, run_name=f"w{workers}", figure_samples=0)
        raw["data"]["image"]["decode"] = "gpu"  # the image part on the device (here the CPU), the audio as it is
        cfg = resolve_config(raw)
        task_input = CompositeModality(cfg.model.parts, registry=get_registry()).device_transform(cfg.data, device=CPU)
        assert set(task_input.steps) == {"image", "audio"} and task_input.steps["audio"] is None
        losses.append(pretrain(cfg, progress=False).train_loss)
    assert math.isfinite(losses[0]) and losses[0] == losses[1]
