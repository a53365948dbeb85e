"""Detections of a trained ``anymae detect`` model: drawn on their images, and ``anymae predict``'s COCO results.

Drawing uses torchvision's ``draw_segmentation_masks`` and ``draw_bounding_boxes`` on the image's first three bands
(a grey or two-band image repeats its first band), each detection above ``score_threshold`` with its category name
and score.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from anymae.core.build.detector import DETECTOR_FORMAT, Detector, assemble_detector
from anymae.core.config import resolve_model_config
from anymae.core.config.stream import data_section
from anymae.core.distributed.context import resolve_device
from anymae.core.evaluate.detection import MASK_THRESHOLD, coco_results, write_results
from anymae.core.io.checkpoint import CheckpointError, read_checkpoint
from anymae.core.weights.loading import load_state_dict_checked
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["PredictResult", "draw_detections", "load_detector", "predict_images", "save_detection_figure"]

DRAW_SCORE = 0.5  # detections drawn: score at least this (detectron2's demo default)
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]


def _rgb(image: Tensor) -> Tensor:
    """(C, H, W) float in [0, 1] -> (3, H, W) uint8."""
    bands = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    return (bands.clamp(0, 1) * 255).round().to(torch.uint8)


def draw_detections(
    image: Tensor, output: Mapping[str, Tensor], *, class_names: Sequence[str], score_threshold: float = DRAW_SCORE
) -> Tensor:
    """image (C, H, W) in [0, 1] and one image's eval-mode Mask R-CNN output -> (3, H, W) uint8 with the masks
    (binarised at 0.5) and boxes of detections scoring at least ``score_threshold``, labelled ``name score``."""
    keep = output["scores"].detach().cpu() >= score_threshold
    boxes = output["boxes"].detach().cpu()[keep]
    labels = output["labels"].detach().cpu()[keep].tolist()
    scores = output["scores"].detach().cpu()[keep].tolist()
    colors = [PALETTE[(k - 1) % len(PALETTE)] for k in labels]
    canvas = _rgb(image.detach().cpu())
    if "masks" in output and labels:
        masks = output["masks"].detach().cpu()[keep][:, 0] > MASK_THRESHOLD  # (R, H, W)
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.45, colors=colors)
    if not labels:
        return canvas
    text = [f"{class_names[k - 1]} {s:.2f}" for k, s in zip(labels, scores, strict=True)]
    return draw_bounding_boxes(canvas, boxes, labels=text, colors=colors, width=1)


def save_detection_figure(drawn: Sequence[Tensor], path: Path) -> Path:
    """Drawn images (3, H, W) uint8 side by side (padded to the largest) -> one PNG at ``path``."""
    height = max(d.shape[1] for d in drawn)
    width = max(d.shape[2] for d in drawn)
    padded = [torch.nn.functional.pad(d, (0, width - d.shape[2], 0, height - d.shape[1])) for d in drawn]
    grid = make_grid(padded, nrow=len(padded), padding=2, pad_value=255)  # (3, H', W') uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path


def load_detector(path: str | Path, *, registry: Registry | None = None) -> Detector:
    """An ``anymae detect`` checkpoint (checkpoint-best.pt / checkpoint-last.pt) -> its :class:`Detector` in eval
    mode, on the CPU."""
    registry = resolve_registry(registry)
    payload = read_checkpoint(Path(path))
    if not isinstance(payload, dict) or payload.get("format") != DETECTOR_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not an anymae detect checkpoint (format {DETECTOR_FORMAT!r}, got {found!r})")
    config = payload["config"]
    model_cfg = resolve_model_config(copy.deepcopy(config["model"]), registry)
    _, _, rcnn = assemble_detector(model_cfg, config["detector"], registry)
    detector = Detector(rcnn, depth=model_cfg.depth, config=config)
    load_state_dict_checked(detector, payload["model"], source=str(path), strict=True)
    return detector.eval()


@dataclass
class PredictResult:
    results: Path  # COCO results JSON
    images: Path  # the COCO "images" list the results' image ids refer to
    detections: int
    drawn: list[Path]


@torch.no_grad()
def predict_images(
    checkpoint: str | Path,
    paths: Sequence[str | Path],
    *,
    output: Path,
    draw_dir: Path | None = None,
    device: str = "auto",
    registry: Registry | None = None,
) -> PredictResult:
    """Detections of ``checkpoint`` (an ``anymae detect`` checkpoint) on image files -> COCO results JSON at
    ``output``; image ``paths[i]`` has image id ``i + 1``, listed with its file and size in ``<output
    stem>.images.json`` (a COCO ``images`` list). ``draw_dir``: also one PNG per image with its detections,
    ``NNNN-<stem>.png`` (NNNN: its image id)."""
    registry = resolve_registry(registry)
    detector: Detector = load_detector(checkpoint, registry=registry)
    config = detector.config
    model_cfg = resolve_model_config(config["model"], registry)
    modality = registry.modality(model_cfg.modality)
    data = data_section(modality.detection_data_config, config["data"], "data")
    run_on = resolve_device(device)
    detector.to(run_on)
    categories = config["categories"]
    category_ids = [c["id"] for c in categories]
    names = [str(c.get("name", c["id"])) for c in categories]
    predictions: list[dict[str, Any]] = []
    listed, drawn = [], []
    for image_id, path in enumerate(paths, start=1):
        (image,) = modality.load_detection_inputs([path], data, model_cfg.tokenizer)
        (out,) = detector([image.to(run_on)])
        predictions += coco_results(out, image_id=image_id, category_ids=category_ids)
        listed.append({"id": image_id, "file_name": str(path), "height": image.shape[-2], "width": image.shape[-1]})
        if draw_dir is not None:
            picture = draw_detections(image, out, class_names=names)
            target = Path(draw_dir) / f"{image_id:04d}-{Path(path).stem}.png"  # ids keep equal stems apart
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture.permute(1, 2, 0).numpy()).save(target)
            drawn.append(target)
    write_results(output, predictions)
    images = output.with_suffix(".images.json")
    images.write_text(json.dumps({"images": listed, "categories": categories}))
    return PredictResult(output, images, len(predictions), drawn)
