"""``data.decode: cpu`` (issue 20): JPEGs decoded by torchvision and augmented on uint8 tensors, with the crop
boxes and flips of the PIL path (``data.decode: pil``) for the same seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from anymae.core.data.samples import BadSampleError
from anymae.modalities.image.cpu_decode import TensorDecodedImages
from anymae.modalities.image.data import ImageFiles, ImageReader, pretrain_transform

DEMO = Path(__file__).resolve().parents[1] / "modalities" / "image" / "demo_photos" / "train"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = (64, 64)


def _pair(files, *, hflip=True):
    reader = ImageReader(in_chans=3)
    kwargs = {"size": SIZE, "scale": (0.2, 1.0), "hflip": hflip, "mean": MEAN, "std": STD}
    tensor_path = TensorDecodedImages(files, **kwargs, reader=reader)
    pil_path = ImageFiles(files, transform=pretrain_transform(**kwargs), reader=reader)
    return tensor_path, pil_path


def _boxes_of(dataset, index: int, seed: int, monkeypatch) -> tuple[list, torch.Tensor]:
    drawn = []
    original = transforms.RandomResizedCrop.get_params
    monkeypatch.setattr(
        transforms.RandomResizedCrop, "get_params", staticmethod(lambda *a: drawn.append(original(*a)) or drawn[-1])
    )
    torch.manual_seed(seed)
    out = dataset[index]
    monkeypatch.setattr(transforms.RandomResizedCrop, "get_params", staticmethod(original))
    return drawn, out


def test_jpegs_get_the_pil_path_s_crop_boxes_and_flips_and_nearly_its_pixels(monkeypatch):
    files = sorted(DEMO.glob("*.jpg"))
    assert len(files) >= 5
    tensor_path, pil_path = _pair(files)
    diffs = []
    for index in range(len(files)):
        for seed in (0, 1, 2):
            boxes_t, x_t = _boxes_of(tensor_path, index, seed, monkeypatch)
            boxes_p, x_p = _boxes_of(pil_path, index, seed, monkeypatch)
            assert boxes_t == boxes_p and len(boxes_t) == 1  # the same RandomResizedCrop box
            assert x_t.shape == x_p.shape == (3, *SIZE) and x_t.dtype == torch.float32
            # In 0-255 units: a wrong box or a missing flip gives tens of levels, not a few.
            diffs.append(((x_t - x_p) * torch.tensor(STD).view(3, 1, 1) * 255).abs().mean().item())
    # Measured on the demo photographs: mean |difference| 0.0001-0.004 levels of 255 (the same libjpeg-turbo
    # decode; torch's uint8 antialiased bicubic is PIL's algorithm, rounding differs in a few pixels). A wrong box
    # or flip gives tens of levels.
    assert max(diffs) < 0.05, diffs


def test_other_files_take_the_pil_path_exactly(tmp_path):
    rng = np.random.default_rng(0)
    png = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, size=(80, 96, 3), dtype=np.uint8)).save(png)
    cmyk = tmp_path / "b.jpg"
    Image.fromarray(rng.integers(0, 256, size=(80, 96, 3), dtype=np.uint8)).convert("CMYK").save(cmyk)
    tensor_path, pil_path = _pair([png, cmyk])
    for index in range(2):
        torch.manual_seed(5)
        a = tensor_path[index]
        torch.manual_seed(5)
        b = pil_path[index]
        assert torch.equal(a, b)


def test_a_truncated_or_foreign_jpeg_is_handled_as_on_the_pil_path(tmp_path):
    good = sorted(DEMO.glob("*.jpg"))[0].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good[: len(good) // 3])
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    tensor_path, pil_path = _pair([cut, text])
    for index in range(2):
        outcomes = []
        for dataset in (tensor_path, pil_path):
            torch.manual_seed(0)
            try:
                outcomes.append(dataset[index])
            except BadSampleError as exc:
                outcomes.append(type(exc))
        if isinstance(outcomes[0], torch.Tensor):
            assert torch.equal(outcomes[0], outcomes[1])
        else:
            assert outcomes[0] == outcomes[1] == BadSampleError


def test_decode_pil_is_the_official_pipeline_and_cpu_the_default():
    from anymae.core.config import from_dict
    from anymae.plugins import get_registry

    modality = get_registry().modality("image")
    tok = from_dict(modality.tokenizer_config, {"img_size": 64, "patch_size": 8}, "model.tokenizer")
    for decode, kind in (("cpu", TensorDecodedImages), ("pil", ImageFiles)):
        data = from_dict(modality.data_config, {"root": "builtin:demo_photos", "decode": decode}, "data")
        assert isinstance(modality.build_dataset(data, tok, split="train"), kind)
    assert from_dict(modality.data_config, {}, "data").decode == "cpu"


def test_grey_models_get_pils_luma_of_the_rgb_pixels_of_the_same_crop():
    """in_chans=1 gives one channel whose values are ITU-R 601 luma (PIL's ``convert("L")``: 0.299 R + 0.587 G +
    0.114 B) of what in_chans=3 gives for the same seed (same crop box and flip), within 2 levels of 255."""
    files = [DEMO / "astronaut.jpg"]  # a colour photograph: its R, G and B differ
    pixels = {}
    for in_chans in (1, 3):
        kwargs = {"size": SIZE, "scale": (0.2, 1.0), "hflip": True, "mean": MEAN[:in_chans], "std": STD[:in_chans]}
        dataset = TensorDecodedImages(files, **kwargs, reader=ImageReader(in_chans=in_chans))
        torch.manual_seed(0)
        x = dataset[0]
        assert x.shape == (in_chans, *SIZE)
        mean, std = torch.tensor(MEAN[:in_chans])[:, None, None], torch.tensor(STD[:in_chans])[:, None, None]
        pixels[in_chans] = (x * std + mean).numpy() * 255  # (C, H, W) in 0..255
    luma = np.tensordot(np.array([0.299, 0.587, 0.114]), pixels[3], axes=1)  # (H, W)
    assert np.ptp(luma) > 50 and np.abs(pixels[3][0] - luma).max() > 20  # not flat, not grey already
    assert np.abs(pixels[1][0] - luma).max() <= 2.0
