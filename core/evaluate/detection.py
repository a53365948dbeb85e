"""COCO detection and instance-segmentation scores, computed by pycocotools' ``COCOeval`` itself.

Predictions are COCO results (``{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation": RLE}``,
the format ``COCO.loadRes`` reads and the COCO server takes), in the original image's pixel coordinates.
``COCOeval`` scores ``bbox`` and ``segm`` over 10 IoU thresholds 0.50:0.05:0.95 with 101-point interpolated
precision; crowd regions in the ground truth are ignored as COCO does (a detection matching one is neither a true
nor a false positive). Scores are percentages; one with no ground truth in its area range (``COCOeval`` says -1) is
NaN. A model that predicts nothing has AP 0.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

__all__ = [
    "IOU_TYPES",
    "APScores",
    "DetectionScores",
    "coco_ground_truth",
    "coco_results",
    "evaluate_coco",
    "write_results",
]

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]
MASK_THRESHOLD = 0.5  # torchvision's paste_masks_in_image gives probabilities; detectron2 binarises at 0.5 too


@dataclass(frozen=True)
class APScores:
    """One IoU type's COCO summary, in percent (NaN where the ground truth has no object of that size)."""

    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{name}": getattr(self, name) for name in STAT_NAMES}


@dataclass(frozen=True)
class DetectionScores:
    """``bbox`` and ``segm`` scores on ``num_images`` images (``segm`` is None when it was not asked for)."""

    bbox: APScores
    segm: APScores | None
    num_images: int

    def summary(self) -> str:
        """``box AP NN.N (AP50 NN.N), mask AP NN.N (AP50 NN.N) on N held-out images``."""
        text = f"box AP {self.bbox.AP:.1f} (AP50 {self.bbox.AP50:.1f})"
        if self.segm is not None:
            text += f", mask AP {self.segm.AP:.1f} (AP50 {self.segm.AP50:.1f})"
        return f"{text} on {self.num_images} held-out images"


def coco_ground_truth(dataset: Mapping[str, Any]) -> COCO:
    """A COCO instances dict (``images``, ``annotations``, ``categories``) as pycocotools' index, built silently."""
    coco = COCO()
    coco.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _scores(stats: Sequence[float]) -> APScores:
    values = [math.nan if v < 0 else 100.0 * float(v) for v in stats[: len(STAT_NAMES)]]
    return APScores(*values)


def _for_iou_type(prediction: Mapping[str, Any], iou_type: str) -> dict[str, Any]:
    """A copy of one result for ``COCO.loadRes``; for ``segm`` without its box, or loadRes would take the box's
    area for the mask's and sort it into the wrong small/medium/large range (detectron2's ``coco_evaluation.py``
    drops the box the same way)."""
    item = dict(prediction)
    if iou_type == "segm":
        if "segmentation" not in item:
            raise ValueError(f"a prediction for image {item.get('image_id')} has no segmentation, segm needs one")
        item.pop("bbox", None)
    return item


def evaluate_coco(
    ground_truth: COCO, predictions: Sequence[Mapping[str, Any]], *, iou_types: Sequence[str] = IOU_TYPES
) -> DetectionScores:
    """COCOeval on ``predictions`` (COCO results) against ``ground_truth``, over its images, per IoU type."""
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown or "bbox" not in iou_types:
        raise ValueError(f"iou_types {list(iou_types)} must include 'bbox' and be among {list(IOU_TYPES)}")
    image_ids = sorted(ground_truth.getImgIds())
    known = set(image_ids)
    strays = sorted({p["image_id"] for p in predictions} - known)
    if strays:
        raise ValueError(f"predictions for {len(strays)} images not in the ground truth, e.g. ids {strays[:5]}")
    results: dict[str, APScores] = {}
    for iou_type in iou_types:
        if not predictions:  # COCO.loadRes cannot read an empty list; nothing detected scores 0
            results[iou_type] = _scores([0.0] * len(STAT_NAMES))
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
            detections = ground_truth.loadRes([_for_iou_type(p, iou_type) for p in predictions])
            evaluator = COCOeval(ground_truth, detections, iouType=iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        results[iou_type] = _scores(evaluator.stats)
    return DetectionScores(bbox=results["bbox"], segm=results.get("segm"), num_images=len(image_ids))


def coco_results(
    output: Mapping[str, Tensor], *, image_id: int, category_ids: Sequence[int], with_masks: bool = True
) -> list[dict[str, Any]]:
    """One image's torchvision detections -> COCO results.

    output: ``boxes`` (R, 4) x1 y1 x2 y2, ``labels`` (R,) in 1..K, ``scores`` (R,), ``masks`` (R, 1, H, W)
    probabilities, in the image's pixel coordinates (eval-mode ``MaskRCNN``). ``category_ids[k - 1]`` is label k's
    COCO category id. Masks are binarised at 0.5 and run-length encoded (``pycocotools.mask.encode``)."""
    boxes = output["boxes"].detach().cpu().double().numpy()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().cpu().tolist()
    bad = [k for k in labels if not 1 <= k <= len(category_ids)]
    if bad:
        raise ValueError(f"labels {sorted(set(bad))[:5]} outside 1..{len(category_ids)} (0 is the background)")
    rles: list[dict[str, Any]] = []
    if with_masks:
        binary = (output["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)  # (R, H, W)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))  # one RLE per instance
    results = []
    for i, (box, label, score) in enumerate(zip(boxes, labels, scores, strict=True)):
        x1, y1, x2, y2 = box.tolist()
        item: dict[str, Any] = {
            "image_id": int(image_id), "category_id": int(category_ids[label - 1]),
            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score),
        }  # fmt: skip
        if with_masks:
            rle = rles[i]
            item["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
        results.append(item)
    return results


def write_results(path: Path, predictions: Sequence[Mapping[str, Any]]) -> Path:
    """COCO results as a JSON list (RLE counts as text), the file ``COCO.loadRes`` and the COCO server read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in predictions:
        row = dict(p)
        seg = row.get("segmentation")
        if isinstance(seg, Mapping) and isinstance(seg.get("counts"), bytes):
            row["segmentation"] = {**seg, "counts": seg["counts"].decode("ascii")}
        rows.append(row)
    path.write_text(json.dumps(rows))
    return path
