"""COCO-format instance annotations with their images, and detection augmentation applied to image, boxes and masks.

**Reading** (:func:`read_coco`): a COCO instances JSON (``images``, ``annotations``, ``categories``: what every
labelling tool exports) and its image folder. Each problem is named and counted in a :class:`CocoReport`, never
silently: an image entry whose file is missing is dropped; an annotation for an image id the JSON does not list, of
a category id it does not list, or whose box has no area inside the image is dropped; a box reaching outside the
image is clipped to it; a polygon of fewer than 3 points is dropped (an annotation left without one is dropped); an
annotation without a mask is kept with its box as its mask. Crowd regions (``iscrowd: 1``) are not training
targets (detectron2's ``DatasetMapper`` drops them) and stay in the ground truth, where ``COCOeval`` ignores them
as COCO does. Images with no annotation are kept as negatives and counted. Duplicate ids or no images left raise
:class:`DataError`.

**Samples** (:class:`CocoDetection`): ``(image (C, H, W) float32, target)``, the pair torchvision's detection
models take: the image in [0, 1] (or the reader's scaled bands: N-band TIFF, ``.npy``... as in the image plugin),
not normalised (``GeneralizedRCNNTransform`` normalises); ``target``: ``boxes`` (K, 4) float32 x1 y1 x2 y2 in
pixels, ``labels`` (K,) int64 in 1..num categories (categories sorted by id; 0 is the background), ``masks``
(K, H, W) uint8 (polygons and RLE decoded with pycocotools as ``COCO.annToMask``), ``image_id``. A file that
cannot be read, or whose size is not the JSON's, is a :class:`BadSampleError` naming it.

**Augmentation**, torchvision.transforms.v2 on an ``Image``, ``BoundingBoxes`` and ``Mask`` together:

- :func:`lsj_transform`: ViTDet's large-scale jitter (detectron2 ``projects/ViTDet/configs/common/
  coco_loader_lsj.py``): horizontal flip, ``ResizeScale`` (scale 0.1-2.0 of a ``size`` x ``size`` target, aspect
  kept), ``FixedSizeCrop`` to at most ``size`` x ``size``, boxes recomputed from the cropped masks
  (``recompute_boxes = True``), empty instances removed; then padded to ``size`` x ``size`` at the bottom and right
  with the normalisation mean (ViTDet's ``square_pad``, 0 after normalisation), so that the model's resize keeps it.
- :func:`flip_transform`: resize-and-flip: the flip here, the resize in the model (``min_size`` of
  ``GeneralizedRCNNTransform``, a tuple for multi-scale training).
"""

from __future__ import annotations

import json
import random
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as tvf

from anymae.core.config.detect import DetectionDataConfig
from anymae.core.data.files import check_channel_stats, resolve_data_file, resolve_data_root, under_root
from anymae.core.data.samples import BadSampleError, DataError, DatasetTraits, DatasetWithTraits

from .data import ImageReader
from .detect_demo import DETECT_DEMO_ROOT, demo_detect_root

__all__ = [
    "CocoDetection",
    "CocoImage",
    "CocoInstances",
    "CocoReport",
    "FixedSizeCrop",
    "ImageDetectionDataConfig",
    "PadSquare",
    "ResizeScale",
    "boxes_from_masks",
    "collate_detection",
    "detection_dataset",
    "flip_transform",
    "load_detection_inputs",
    "lsj_transform",
    "read_coco",
]

EXAMPLES = 5  # named problems per kind in a report


@dataclass
class CocoReport:
    """What :func:`read_coco` dropped, clipped or kept aside, with a few named examples of each."""

    images: int = 0
    annotations: int = 0
    negatives: int = 0
    crowd: int = 0
    clipped: int = 0
    box_only: int = 0
    missing_files: list[str] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)  # annotation ids whose image id is not listed
    unknown_categories: Counter[int] = field(default_factory=Counter)  # category id -> annotations
    empty_boxes: list[int] = field(default_factory=list)  # annotation ids
    bad_polygons: int = 0

    def lines(self) -> list[str]:
        """One line per kind of problem met (empty when the data is clean), each with its count and examples."""
        out = []
        if self.missing_files:
            out.append(f"{len(self.missing_files)} images listed but not found, e.g. {self.missing_files[:EXAMPLES]}")
        if self.orphans:
            out.append(f"{len(self.orphans)} annotations of image ids not listed, e.g. ids {self.orphans[:EXAMPLES]}")
        if self.unknown_categories:
            ids = dict(self.unknown_categories.most_common(EXAMPLES))
            out.append(
                f"{sum(self.unknown_categories.values())} annotations of unknown category ids (id: annotations) {ids}"
            )
        if self.empty_boxes:
            out.append(
                f"{len(self.empty_boxes)} boxes of zero size or outside their image dropped, "
                f"e.g. annotation ids {self.empty_boxes[:EXAMPLES]}"
            )
        if self.clipped:
            out.append(f"{self.clipped} boxes reaching outside their image clipped to it")
        if self.bad_polygons:
            out.append(f"{self.bad_polygons} polygons of fewer than 3 points dropped")
        if self.box_only:
            out.append(f"{self.box_only} annotations without a mask: their box is their mask")
        return out

    def summary(self) -> str:
        """``N images (M negatives), A annotations (C crowd)`` and the problems, one per line."""
        head = (
            f"{self.images} images ({self.negatives} without objects), {self.annotations} objects ({self.crowd} crowd)"
        )
        return "\n".join([head, *self.lines()])


@dataclass(frozen=True)
class CocoImage:
    """One image entry: its file, COCO id and size as the JSON gives it."""

    path: Path
    id: int
    height: int
    width: int


@dataclass
class CocoInstances:
    """A checked COCO split: images, their kept annotations (crowd included), categories sorted by id, the
    COCO dict of what was kept (the ground truth ``COCOeval`` scores against) and the report."""

    images: list[CocoImage]
    annotations: dict[int, list[dict[str, Any]]]  # image id -> annotations, crowd regions included
    categories: list[dict[str, Any]]
    report: CocoReport

    @property
    def category_ids(self) -> list[int]:
        """COCO category id of label k at index k - 1."""
        return [c["id"] for c in self.categories]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(str(c.get("name", c["id"])) for c in self.categories)

    def ground_truth(self) -> dict[str, Any]:
        """The kept images and annotations as a COCO instances dict (for ``pycocotools.coco.COCO``)."""
        images = [
            {"id": im.id, "height": im.height, "width": im.width, "file_name": im.path.name} for im in self.images
        ]
        annotations = [a for im in self.images for a in self.annotations.get(im.id, [])]
        return {"images": images, "annotations": annotations, "categories": self.categories}


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read COCO annotations {path}: {exc}") from None
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise DataError(f"{path} is not a COCO instances file: no {missing} list")
    return data


def _unique(items: list[dict[str, Any]], what: str, path: Path) -> dict[int, dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for item in items:
        if item["id"] in by_id:
            raise DataError(f"{path}: {what} id {item['id']} appears twice")
        by_id[item["id"]] = item
    return by_id


def _clip_box(bbox: Sequence[float], height: int, width: int) -> tuple[list[float], bool]:
    """COCO [x, y, w, h] -> the part inside the image, [x, y, w, h], and whether it was cut."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    return [x1, y1, x2 - x1, y2 - y1], (x1, y1, x2, y2) != (x, y, x + w, y + h)


def _check_segmentation(ann: dict[str, Any], report: CocoReport) -> dict[str, Any] | None:
    """``ann`` with polygons of fewer than 3 points removed and ``area`` filled in; None when no polygon is left."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polygons = [p for p in seg if len(p) >= 6]
        report.bad_polygons += len(seg) - len(polygons)
        if seg and not polygons:
            return None
        if not polygons:
            report.box_only += 1
        ann = {**ann, "segmentation": polygons}
    elif not isinstance(seg, dict):
        report.box_only += 1
        ann = {**ann, "segmentation": []}
    if "area" not in ann:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    return ann


def read_coco(annotations: Path, images_root: Path) -> CocoInstances:
    """A COCO instances JSON and its images (``file_name`` under ``images_root``) -> the checked split."""
    data = _load_json(annotations)
    categories = sorted(_unique(data["categories"], "category", annotations).values(), key=lambda c: c["id"])
    if not categories:
        raise DataError(f"{annotations} lists no categories")
    known_categories = {c["id"] for c in categories}
    report = CocoReport()
    images: dict[int, CocoImage] = {}
    for entry in _unique(data["images"], "image", annotations).values():
        path = under_root(entry["file_name"], images_root)
        if not path.is_file():
            report.missing_files.append(str(path))
            continue
        images[entry["id"]] = CocoImage(path, entry["id"], int(entry["height"]), int(entry["width"]))
    listed = {entry["id"] for entry in data["images"]}
    kept: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        if ann["image_id"] not in listed:
            report.orphans.append(ann["id"])
            continue
        if ann["image_id"] not in images:  # its file is missing, counted above
            continue
        if ann["category_id"] not in known_categories:
            report.unknown_categories[ann["category_id"]] += 1
            continue
        image = images[ann["image_id"]]
        box, cut = _clip_box(ann["bbox"], image.height, image.width)
        if box[2] <= 0 or box[3] <= 0:
            report.empty_boxes.append(ann["id"])
            continue
        checked = _check_segmentation({**ann, "bbox": box, "iscrowd": int(ann.get("iscrowd", 0))}, report)
        if checked is None:
            continue
        report.clipped += cut
        report.crowd += checked["iscrowd"]
        kept.setdefault(image.id, []).append(checked)
    if not images:
        raise DataError(f"{annotations}: none of its {len(data['images'])} images is under {images_root}")
    report.images = len(images)
    report.annotations = sum(len(anns) for anns in kept.values())
    report.negatives = sum(1 for i in images if not any(not a["iscrowd"] for a in kept.get(i, [])))
    return CocoInstances(sorted(images.values(), key=lambda im: im.id), kept, categories, report)


def annotation_mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """One annotation's mask (H, W) uint8, as pycocotools' ``COCO.annToMask``: polygons merged, uncompressed RLE
    converted, compressed RLE decoded; an annotation without a mask gets its box filled."""
    seg = ann["segmentation"]
    if isinstance(seg, list) and not seg:
        x, y, w, h = ann["bbox"]
        seg = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    if list(rle["size"]) != [height, width]:
        raise BadSampleError(f"annotation {ann['id']}: RLE of size {rle['size']} on an image of {height}x{width}")
    with warnings.catch_warnings():  # pycocotools' Cython decode trips numpy 2's __array__(copy=) deprecation
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode(rle)


class CocoDetection(DatasetWithTraits):
    """A checked COCO split -> ``(image (C, H, W) float32, target)`` through ``transform`` (None: as read), which
    gets a ``tv_tensors.Image`` and a target of ``BoundingBoxes`` (XYXY), ``Mask`` (K, H, W) and ``labels``."""

    def __init__(self, instances: CocoInstances, *, reader: ImageReader, transform: v2.Transform | None = None) -> None:
        self.instances, self.reader, self.transform = instances, reader, transform
        self.label_of = {cid: k for k, cid in enumerate(instances.category_ids, start=1)}

    def __len__(self) -> int:
        return len(self.instances.images)

    @property
    def traits(self) -> DatasetTraits:
        return DatasetTraits(classes=self.instances.class_names, source=self.source)

    def source(self, index: int) -> Path:
        """The image file item ``index`` is read from."""
        return self.instances.images[index].path

    def pixels(self, entry: CocoImage) -> Tensor:
        """The image file as float32 (C, H, W), checked against the JSON's size."""
        image = self.reader(entry.path)
        if isinstance(image, Image.Image):
            image = tvf.to_dtype(tvf.to_image(image), torch.float32, scale=True)
        if tuple(image.shape[-2:]) != (entry.height, entry.width):
            raise BadSampleError(
                f"image {entry.path} is {image.shape[-2]}x{image.shape[-1]} but its annotations say "
                f"{entry.height}x{entry.width} (H x W)"
            )
        return image

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        entry = self.instances.images[index]
        image = self.pixels(entry)
        anns = [a for a in self.instances.annotations.get(entry.id, []) if not a["iscrowd"]]
        h, w = entry.height, entry.width
        boxes = torch.tensor(
            [[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)], dtype=torch.float32
        )
        masks = np.stack([annotation_mask(a, h, w) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes.reshape(-1, 4), format="XYXY", canvas_size=(h, w)),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
        }
        out_image: Tensor = tv_tensors.Image(image)
        if self.transform is not None:
            out_image, target = self.transform(out_image, target)
        plain = {key: value.as_subclass(Tensor) for key, value in target.items()}
        plain["image_id"] = torch.tensor(entry.id, dtype=torch.int64)
        return out_image.as_subclass(Tensor), plain


def collate_detection(
    batch: Sequence[tuple[Tensor, dict[str, Tensor]]],
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Samples -> (images, targets) lists: torchvision's detection models take images of different sizes."""
    return [image for image, _ in batch], [target for _, target in batch]


# --- augmentation ----------------------------------------------------------------------------------------------
class ResizeScale(v2.Transform):
    """detectron2 ``ResizeScale``: draw s in [``min_scale``, ``max_scale``], resize by the largest factor that fits
    the image into (s * ``size``) x (s * ``size``), aspect kept (images bilinear, masks nearest)."""

    def __init__(self, size: int, *, min_scale: float = 0.1, max_scale: float = 2.0) -> None:
        super().__init__()
        self.size, self.min_scale, self.max_scale = size, min_scale, max_scale

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        scale = random.uniform(self.min_scale, self.max_scale)
        factor = min(self.size * scale / h, self.size * scale / w)
        return {"size": [max(1, round(h * factor)), max(1, round(w * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tvf.resize(inpt, params["size"], interpolation=InterpolationMode.BILINEAR, antialias=True)


class FixedSizeCrop(v2.Transform):
    """detectron2 ``FixedSizeCrop(pad=False)``: a window of at most ``size`` x ``size`` whose offset is one uniform
    draw u times the room left on each axis (rounded), as detectron2 draws it."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        u = random.random()
        return {
            "top": round(max(h - self.size, 0) * u), "left": round(max(w - self.size, 0) * u),
            "height": min(h, self.size), "width": min(w, self.size),
        }  # fmt: skip

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tvf.crop(inpt, **params)


class PadSquare(v2.Transform):
    """Pad at the bottom and right to ``size`` x ``size``: images with ``fill`` (one value per channel: the
    normalisation mean, which the model maps to 0), masks with 0."""

    def __init__(self, size: int, *, fill: Sequence[float]) -> None:
        super().__init__()
        self.size, self.fill = size, [float(v) for v in fill]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(self.size - w, 0), max(self.size - h, 0)]}  # left, top, right, bottom

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image):
            fill = self.fill
            if len(fill) != inpt.shape[-3]:
                raise ValueError(f"{len(fill)} fill values for an image of {inpt.shape[-3]} channels")
            out = tvf.pad(inpt, params["padding"], fill=0.0)
            h, w = inpt.shape[-2:]
            out[..., h:, :] = torch.tensor(fill).view(-1, 1, 1)
            out[..., :, w:] = torch.tensor(fill).view(-1, 1, 1)
            return out
        return tvf.pad(inpt, params["padding"], fill=0)


def boxes_from_masks(image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """Each box made the pixel extent of its mask (x1, y1, x2 + 1, y2 + 1), as detectron2 recomputes boxes after
    LSJ's crop (``recompute_boxes``); an empty mask gets an empty box, which ``SanitizeBoundingBoxes`` removes."""
    masks = target["masks"].bool()  # (K, H, W)
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (K, H), (K, W)
    h, w = masks.shape[-2:]
    y = torch.arange(h, dtype=torch.float32)
    x = torch.arange(w, dtype=torch.float32)
    big = float(max(h, w))
    x1 = torch.where(cols, x, big).amin(dim=1)
    x2 = torch.where(cols, x + 1, 0.0).amax(dim=1)
    y1 = torch.where(rows, y, big).amin(dim=1)
    y2 = torch.where(rows, y + 1, 0.0).amax(dim=1)
    empty = ~cols.any(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).masked_fill(empty[:, None], 0.0)  # (K, 4)
    canvas = tuple(target["boxes"].canvas_size)
    out = dict(target)
    out["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas)
    return image, out


def lsj_transform(
    size: int, *, mean: Sequence[float], min_scale: float = 0.1, max_scale: float = 2.0, hflip: bool = True
) -> v2.Compose:
    """ViTDet's large-scale jitter (``size`` 1024, scales 0.1-2.0 there), then the square pad (see the module)."""
    steps: list[Any] = [v2.RandomHorizontalFlip()] if hflip else []
    steps += [
        ResizeScale(size, min_scale=min_scale, max_scale=max_scale),
        FixedSizeCrop(size),
        boxes_from_masks,
        v2.SanitizeBoundingBoxes(min_size=1.0),
        PadSquare(size, fill=mean),
    ]
    return v2.Compose(steps)


def flip_transform() -> v2.Compose:
    """Resize-and-flip training: a horizontal flip of image, boxes and masks (the model resizes)."""
    return v2.Compose([v2.RandomHorizontalFlip()])


# --- the data section and its datasets ---------------------------------------------------------------------------
@dataclass
class ImageDetectionDataConfig(DetectionDataConfig):
    """``data`` of ``anymae detect`` for images: the COCO files under ``root`` and how the images' bands are read
    (as the image plugin's pre-training data)."""

    bands: tuple[int, ...] | None = None  # the files' bands to use, in this order (default: all)
    value_range: tuple[float, float] | None = None  # stored [lo, hi] -> [0, 1]; default: the integer type's range
    array_layout: str = "CHW"  # axis order of 3-D .npy arrays: CHW or HWC

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.array_layout not in ("CHW", "HWC"):
            raise ValueError(f"array_layout must be CHW or HWC, got {self.array_layout!r}")

    def reader(self, in_chans: int) -> ImageReader:
        return ImageReader(
            in_chans=in_chans, bands=self.bands, value_range=self.value_range, array_layout=self.array_layout
        )


def _check_bands(data: ImageDetectionDataConfig, in_chans: int) -> None:
    check_channel_stats(data.mean, data.std, in_chans, hint="; `anymae image-stats FOLDER` measures one per band")
    if data.bands is not None and len(data.bands) != in_chans:
        raise DataError(f"data.bands selects {len(data.bands)} bands, but the model reads {in_chans}")


def detection_dataset(
    data: ImageDetectionDataConfig, *, in_chans: int, split: str, augment: dict[str, Any] | None
) -> CocoDetection:
    """``split`` ("train" or "heldout") of ``data`` as a :class:`CocoDetection`; ``augment``: None (as read),
    ``{"recipe": "lsj", "size": S, "scale": (lo, hi)}`` or ``{"recipe": "flip"}``."""
    _check_bands(data, in_chans)
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    images_key, annotations_key = f"{split}_images", f"{split}_annotations"
    root = resolve_data_root(data.root, holds=f"{getattr(data, images_key)} and {getattr(data, annotations_key)}",
                             builtin={DETECT_DEMO_ROOT: demo_detect_root})  # fmt: skip
    annotations = resolve_data_file(getattr(data, annotations_key), root, key=annotations_key)
    images_root = under_root(getattr(data, images_key), root)
    if not images_root.is_dir():
        raise DataError(f"data.{images_key}: folder {images_root} does not exist")
    instances = read_coco(annotations, images_root)
    if split == "train" and data.train_subset is not None:
        instances.images = instances.images[: data.train_subset]
        _recount(instances)
    transform: v2.Transform | None = None
    if augment is not None:
        if augment["recipe"] == "lsj":
            lo, hi = augment["scale"]
            transform = lsj_transform(augment["size"], mean=data.mean, min_scale=lo, max_scale=hi)
        elif augment["recipe"] == "flip":
            transform = flip_transform()
        else:
            raise ValueError(f"unknown detection augmentation {augment['recipe']!r}; expected 'lsj' or 'flip'")
    return CocoDetection(instances, reader=data.reader(in_chans), transform=transform)


def _recount(instances: CocoInstances) -> None:
    """The report's image, object and negative counts for the images kept (``data.train_subset``)."""
    report = instances.report
    kept = [instances.annotations.get(im.id, []) for im in instances.images]
    report.images = len(instances.images)
    report.annotations = sum(len(anns) for anns in kept)
    report.crowd = sum(a["iscrowd"] for anns in kept for a in anns)
    report.negatives = sum(1 for anns in kept if not any(not a["iscrowd"] for a in anns))


def load_detection_inputs(
    paths: Sequence[str | Path], data: ImageDetectionDataConfig, *, in_chans: int
) -> list[Tensor]:
    """Files -> float32 (C, H, W) images at their own sizes, read as :class:`CocoDetection` reads them."""
    _check_bands(data, in_chans)
    reader = data.reader(in_chans)
    out = []
    for path in paths:
        image = reader(Path(path))
        if isinstance(image, Image.Image):
            image = tvf.to_dtype(tvf.to_image(image), torch.float32, scale=True)
        out.append(image.as_subclass(Tensor))
    return out
