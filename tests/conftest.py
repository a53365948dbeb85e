"""Shared fixtures: a tiny real image folder (JPEG + PNG written with PIL) and a tiny image-MAE config; the
``slow`` marker for tests of minutes, which run only when asked for (``-m slow`` or ANYMAE_SLOW_TESTS=1)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

IMAGE_W, IMAGE_H = 48, 40
SLOW_ENV = "ANYMAE_SLOW_TESTS"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"slow: takes minutes (e.g. torch.compile's cold build); deselected unless `-m slow` or {SLOW_ENV}=1",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``slow`` tests unless the run asks for them: a ``-m`` expression naming ``slow`` decides itself,
    ``ANYMAE_SLOW_TESTS=1`` adds them to an ordinary run."""
    if os.environ.get(SLOW_ENV) == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def make_image(seed: int, *, size: tuple[int, int] = (IMAGE_W, IMAGE_H), mode: str = "RGB") -> Image.Image:
    """A gradient background with a filled shape on it; ``seed`` picks colours and geometry."""
    rng = np.random.default_rng(seed)
    w, h = size
    gx = np.linspace(0, 1, w)[None, :, None]
    gy = np.linspace(0, 1, h)[:, None, None]
    base = rng.uniform(0, 1, size=(1, 1, 3))
    array = (255 * np.clip(0.5 * base + 0.3 * gx + 0.2 * gy, 0, 1)).astype(np.uint8)
    array = np.broadcast_to(array, (h, w, 3)).copy()
    image = Image.fromarray(array, "RGB")
    draw = ImageDraw.Draw(image)
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
    if seed % 2:
        draw.ellipse((x0, y0, x0 + w // 3, y0 + h // 3), fill=fill)
    else:
        draw.rectangle((x0, y0, x0 + w // 3, y0 + h // 3), fill=fill)
    return image.convert(mode)


def tiny_mae(**model: Any) -> Any:
    """A one-block image MAE (16 px, patch 8, width 16) at a fixed random init, in eval mode; ``model`` overrides
    any model key (``modality``, ``tokenizer``, ``cls_token``, ...)."""
    import torch

    from anymae.core.build.models import build_model
    from anymae.core.config import resolve_model_config

    cfg = {"tokenizer": {"img_size": 16, "patch_size": 8}, "embed_dim": 16, "depth": 1, "num_heads": 2,
           "decoder_embed_dim": 8, "decoder_depth": 1, "decoder_num_heads": 2, **model}  # fmt: skip
    torch.manual_seed(0)
    return build_model(resolve_model_config(cfg)).eval()


def write_image(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def tiny_image_folder(tmp_path: Path) -> Path:
    """root/train/{cats,dogs}/ with 4 images each (JPEG and PNG), root/val/ with 2 images."""
    root = tmp_path / "images"
    seed = 0
    for cls in ("cats", "dogs"):
        for i in range(4):
            ext = "jpg" if i % 2 == 0 else "png"
            write_image(root / "train" / cls / f"{cls}{i}.{ext}", make_image(seed))
            seed += 1
    write_image(root / "val" / "v0.jpg", make_image(100))
    write_image(root / "val" / "v1.png", make_image(101))
    return root


@pytest.fixture
def tiny_config_dict(tmp_path: Path, tiny_image_folder: Path) -> dict[str, Any]:
    """A raw (unvalidated) config for a tiny image MAE that trains in about a second on a CPU."""
    return {
        "name": "tiny",
        "model": {
            "modality": "image",
            "tokenizer": {"img_size": 32, "patch_size": 8, "in_chans": 3},
            "mask_ratio": 0.75,
            "norm_pix_loss": False,
            "embed_dim": 32,
            "depth": 1,
            "num_heads": 2,
            "decoder_embed_dim": 16,
            "decoder_depth": 1,
            "decoder_num_heads": 2,
        },
        "data": {"root": str(tiny_image_folder), "train_split": "train", "heldout_split": "val"},
        "optim": {"blr": 1.5e-4, "lr": 1.0e-3, "warmup_epochs": 1, "weight_decay": 0.05},
        "train": {
            "epochs": 2,
            "batch_size": 4,
            "num_workers": 0,
            "pin_memory": False,
            "device": "cpu",
            "seed": 0,
            "output_dir": str(tmp_path / "runs"),
            "log_every_steps": 1,
            "heldout_batches": 1,
            "figure_samples": 2,
        },
    }


@pytest.fixture
def tiny_config_file(tmp_path: Path, tiny_config_dict: dict[str, Any]) -> Path:
    """``tiny_config_dict`` written as ``tiny.yaml``."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(tiny_config_dict), sort_keys=False))
    return path
