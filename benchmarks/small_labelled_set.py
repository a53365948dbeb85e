"""A small real labelled image set built from what scikit-image ships: 32x32 crops of ten sample photos
(``skimage.data``), labelled by the photo they come from, as an ImageFolder (``root/train/<class>/*.png``,
``root/val/<class>/*.png``).

Each photo is resized so its shorter side is 256 px; training crops are drawn from its top three quarters and
held-out crops from its bottom quarter, so no held-out pixel is in a training crop. The draw is seeded: the same
arguments write the same files:

    python -m benchmarks.small_labelled_set /tmp/skcrops            # 130 training + 30 held-out crops per photo
    anymae finetune demo_image_finetune data.root=/tmp/skcrops
    anymae linprobe demo_image_linprobe data.root=/tmp/skcrops

``--random-init CONFIG PATH`` also writes an untrained MAE of CONFIG's architecture (seed ``--init-seed``, default
``--seed``) as an anymae checkpoint: the "from random init" reference, fine-tuned with the same recipe
(``finetune.checkpoint=PATH``).

Fewer labels, same held-out crops (``--labelled-per-class N``: the first N of each class's 130 training crops), and
unlabelled crops of the training regions for an in-domain MAE pre-training (``--unlabelled PATH PER_PHOTO``); the
issue 21 comparison (benchmarks/RESULTS.md, "Small-data fine-tuning: MAE vs random init"):

    python -m benchmarks.small_labelled_set /tmp/sk5 --labelled-per-class 5 --random-init demo_image /tmp/rand.pt
    anymae finetune demo_image_finetune finetune.checkpoint=runs/demo_image/checkpoint-0030.pt data.root=/tmp/sk5 \
        train.batch_size=8
    anymae finetune demo_image_finetune finetune.checkpoint=/tmp/rand.pt data.root=/tmp/sk5 train.batch_size=8

``--equalised`` makes every crop grey with a fixed mean and contrast (:func:`equalise`), so colour and brightness
no longer give the photo away; with an in-domain MAE it is the set of the README's figures:

    python -m benchmarks.small_labelled_set skcrops --equalised --unlabelled skcrops_unlabelled 1000
    anymae pretrain demo_image preset=crops
    anymae finetune demo_image_finetune finetune.checkpoint=runs/demo_image_crops/checkpoint-0080.pt data.root=skcrops
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "rocket",
)
EQUAL_MEAN, EQUAL_STD = 128.0, 48.0  # grey level and contrast of every crop with ``equalised=True``
SHORT_SIDE = 256  # every photo is resized to this shorter side before cropping
TRAIN_SHARE = 0.75  # training crops from the top 3/4 of each photo, held-out crops from the bottom 1/4


def _photos() -> Iterator[tuple[str, np.ndarray, int]]:
    """Each photo as ``(name, pixels (H, W, 3) uint8 at SHORT_SIDE, cut)``: rows ``[0, cut)`` are its training
    region, rows ``[cut, H)`` its held-out region."""
    import skimage.data

    for name in PHOTOS:
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        scale = SHORT_SIDE / min(photo.size)
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
        pixels = np.asarray(photo)
        yield name, pixels, int(pixels.shape[0] * TRAIN_SHARE)


def equalise(crop: np.ndarray) -> np.ndarray:
    """``crop`` (H, W, 3) uint8 as grey with mean EQUAL_MEAN and standard deviation EQUAL_STD (clipped to 0..255),
    in three equal channels: colour, brightness and contrast no longer tell the photos apart, only structure does.
    A flat crop becomes flat EQUAL_MEAN grey."""
    grey = np.asarray(Image.fromarray(crop).convert("L"), dtype=np.float64)
    spread = grey.std()
    z = (grey - grey.mean()) / spread if spread > 1e-6 else np.zeros_like(grey)
    out = np.clip(np.rint(EQUAL_MEAN + EQUAL_STD * z), 0, 255).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def _save(crop: np.ndarray, path: Path, equalised: bool) -> None:
    Image.fromarray(equalise(crop) if equalised else crop).save(path)


def build(
    root: Path,
    *,
    train_per_class: int = 130,
    heldout_per_class: int = 30,
    size: int = 32,
    seed: int = 0,
    labelled_per_class: int | None = None,
    equalised: bool = False,
) -> Path:
    """Write the crops under ``root`` (``train/`` and ``val/``) and return ``root``.

    ``labelled_per_class`` keeps only the first that many of each photo's ``train_per_class`` training crops: the
    crops are drawn as for the full set, so the held-out crops are the same and the small training set is a
    subset of the full one (a fewer-labels comparison changes nothing else). ``equalised`` writes every crop through
    :func:`equalise` (same crop boxes).
    """
    if train_per_class < 1 or heldout_per_class < 1:
        raise ValueError(f"need at least one crop per class and split, got {train_per_class}/{heldout_per_class}")
    if labelled_per_class is not None and not 1 <= labelled_per_class <= train_per_class:
        raise ValueError(f"labelled_per_class must be in 1..{train_per_class}, got {labelled_per_class}")
    keep = {"train": train_per_class if labelled_per_class is None else labelled_per_class, "val": heldout_per_class}
    rng = np.random.default_rng(seed)
    for name, pixels, cut in _photos():
        height, width, _ = pixels.shape
        for split, count, (top, bottom) in (
            ("train", train_per_class, (0, cut)),
            ("val", heldout_per_class, (cut, height)),
        ):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                y = int(rng.integers(top, bottom - size + 1))
                x = int(rng.integers(0, width - size + 1))
                if i < keep[split]:  # the draw goes on regardless, so the next split's crops do not move
                    _save(pixels[y : y + size, x : x + size], folder / f"{i:04d}.png", equalised)
    return root


def build_unlabelled(
    root: Path, *, per_photo: int = 1000, size: int = 32, seed: int = 1, equalised: bool = False
) -> Path:
    """Write ``per_photo`` crops of each photo's training region, flat and without class names, under
    ``root/train/`` (an MAE pre-training folder: ``anymae pretrain ... data.root=root``) and return ``root``.

    No pixel of a held-out crop is in them (they come from the rows above the cut); their own seed keeps the
    labelled set unchanged.
    """
    if per_photo < 1:
        raise ValueError(f"need at least one unlabelled crop per photo, got {per_photo}")
    rng = np.random.default_rng(seed)
    folder = root / "train"
    folder.mkdir(parents=True, exist_ok=True)
    for k, (_, pixels, cut) in enumerate(_photos()):
        width = pixels.shape[1]
        for i in range(per_photo):
            y = int(rng.integers(0, cut - size + 1))
            x = int(rng.integers(0, width - size + 1))
            _save(pixels[y : y + size, x : x + size], folder / f"{k * per_photo + i:06d}.png", equalised)
    return root


def random_init_checkpoint(config: str, path: Path, *, seed: int = 0) -> Path:
    """An MAE of ``config``'s model section, as built before any training step, saved in the anymae format."""
    import torch

    from anymae.core import build_model
    from anymae.core.config import load_config
    from anymae.core.io.checkpoint import write_checkpoint

    torch.manual_seed(seed)
    mae = build_model(load_config(config).model)
    payload = {"format": "anymae", "config": {"model": mae.config["model"]}, "model": mae.state_dict()}
    return write_checkpoint(payload, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="output folder (train/ and val/ are written under it)")
    parser.add_argument("--train-per-class", type=int, default=130)
    parser.add_argument("--heldout-per-class", type=int, default=30)
    parser.add_argument("--size", type=int, default=32, help="crop side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--labelled-per-class",
        type=int,
        help="write only the first N training crops of each class (same held-out crops; a subset of the full set)",
    )
    parser.add_argument(
        "--equalised",
        action="store_true",
        help=f"grey crops, mean {EQUAL_MEAN:g}, std {EQUAL_STD:g} (labelled and unlabelled): no colour/brightness cue",
    )
    parser.add_argument("--random-init", nargs=2, metavar=("CONFIG", "PATH"), help="also write an untrained MAE")
    parser.add_argument("--init-seed", type=int, help="seed of the untrained MAE (default: --seed)")
    parser.add_argument(
        "--unlabelled",
        nargs=2,
        metavar=("PATH", "PER_PHOTO"),
        help="also write PER_PHOTO unlabelled crops of each photo's training region under PATH/train/",
    )
    args = parser.parse_args(argv)
    if args.random_init:
        init_seed = args.seed if args.init_seed is None else args.init_seed
        print(f"wrote {random_init_checkpoint(args.random_init[0], Path(args.random_init[1]), seed=init_seed)}")
    if args.unlabelled:
        per_photo = int(args.unlabelled[1])
        path = build_unlabelled(
            Path(args.unlabelled[0]), per_photo=per_photo, size=args.size, seed=args.seed + 1, equalised=args.equalised
        )
        print(f"wrote {len(PHOTOS)} x {per_photo} unlabelled crops under {path / 'train'}")
    root = build(
        args.root,
        train_per_class=args.train_per_class,
        heldout_per_class=args.heldout_per_class,
        size=args.size,
        seed=args.seed,
        labelled_per_class=args.labelled_per_class,
        equalised=args.equalised,
    )
    kept = args.train_per_class if args.labelled_per_class is None else args.labelled_per_class
    print(f"wrote {len(PHOTOS)} classes x ({kept} train + {args.heldout_per_class} val) under {root}")


if __name__ == "__main__":
    main()
