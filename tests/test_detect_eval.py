"""COCO scores from anymae against pycocotools' own COCOeval and hand-computed cases.

The ground truth is hand-made: 20 x 20 squares (area 400: COCO's "small", < 32^2) with their masks as polygons.
A prediction shifted by 4 px along x overlaps a square in 20 x 16 px of a 20 x 24 px union: IoU 16/24 = 0.667,
a match at the IoU thresholds 0.50, 0.55, 0.60, 0.65 of COCO's ten (0.50:0.05:0.95), so its AP is 4/10 = 40.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from anymae.core.evaluate.detection import coco_ground_truth, coco_results, evaluate_coco, write_results

SQUARES = {1: (10, 10), 2: (50, 30)}  # image id -> (x, y) of its one 20 x 20 square, category 7
SIZE = 80


def _square_polygon(x: float, y: float, w: float = 20) -> list[float]:
    return [x, y, x + w, y, x + w, y + 20, x, y + 20]


def _ground_truth(extra=()):
    images = [{"id": i, "height": SIZE, "width": SIZE, "file_name": f"{i}.png"} for i in SQUARES]
    annotations = [
        {"id": i, "image_id": i, "category_id": 7, "bbox": [x, y, 20, 20], "area": 400.0, "iscrowd": 0,
         "segmentation": [_square_polygon(x, y)]}
        for i, (x, y) in SQUARES.items()
    ]  # fmt: skip
    return {"images": images, "annotations": [*annotations, *extra], "categories": [{"id": 7, "name": "square"}]}


def _prediction(image_id: int, dx: float = 0.0, score: float = 0.9) -> dict:
    x, y = SQUARES[image_id]
    mask = np.zeros((SIZE, SIZE), np.uint8, order="F")
    mask[y : y + 20, int(x + dx) : int(x + dx) + 20] = 1
    rle = mask_utils.encode(mask)
    return {
        "image_id": image_id, "category_id": 7, "bbox": [x + dx, y, 20, 20], "score": score,
        "segmentation": {"size": [SIZE, SIZE], "counts": rle["counts"].decode("ascii")},
    }  # fmt: skip


def _pycocotools(gt: dict, predictions: list[dict], iou_type: str) -> np.ndarray:
    coco = coco_ground_truth(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        rows = [{k: v for k, v in p.items() if not (iou_type == "segm" and k == "bbox")} for p in predictions]
        evaluator = COCOeval(coco, coco.loadRes(rows), iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_perfect_predictions_score_ap_100_for_boxes_and_masks():
    scores = evaluate_coco(coco_ground_truth(_ground_truth()), [_prediction(1), _prediction(2)])
    assert pytest.approx(100.0) == scores.bbox.AP and pytest.approx(100.0) == scores.bbox.AP50
    assert pytest.approx(100.0) == scores.segm.AP and scores.segm.APs == pytest.approx(100.0)
    assert math.isnan(scores.bbox.APm) and math.isnan(scores.bbox.APl)  # no medium or large object
    assert scores.summary() == "box AP 100.0 (AP50 100.0), mask AP 100.0 (AP50 100.0) on 2 held-out images"


def test_a_box_shifted_to_iou_two_thirds_scores_the_hand_computed_ap_40():
    scores = evaluate_coco(coco_ground_truth(_ground_truth()), [_prediction(1, dx=4), _prediction(2, dx=4)])
    for ap in (scores.bbox, scores.segm):
        assert pytest.approx(40.0) == ap.AP
        assert pytest.approx(100.0) == ap.AP50
        assert pytest.approx(0.0) == ap.AP75


def test_scores_equal_pycocotools_own_computation_on_mixed_predictions():
    x, y = SQUARES[1]
    holed = np.zeros((SIZE, SIZE), np.uint8, order="F")
    holed[y : y + 20, x : x + 20] = 1
    holed[y + 5 : y + 15, x + 5 : x + 15] = 0  # the square with a 10 x 10 hole: box IoU 1, mask IoU 300/400
    rle = mask_utils.encode(holed)
    good_box_bad_mask = {
        **_prediction(1, score=0.6),
        "segmentation": {"size": [SIZE, SIZE], "counts": rle["counts"].decode("ascii")},
    }
    predictions = [_prediction(1, dx=2, score=0.8), _prediction(2, dx=7, score=0.95), _prediction(2, dx=0, score=0.3)]
    predictions.append(good_box_bad_mask)
    gt = _ground_truth()
    scores = evaluate_coco(coco_ground_truth(gt), predictions)
    assert abs(scores.bbox.AP - scores.segm.AP) > 1
    for iou_type, ours in (("bbox", scores.bbox), ("segm", scores.segm)):
        theirs = _pycocotools(gt, predictions, iou_type)
        assert [ours.AP, ours.AP50, ours.AP75, ours.APs] == pytest.approx([100 * v for v in theirs[:4]])
    assert 0 < scores.bbox.AP < 100


def test_a_detection_on_a_crowd_region_is_neither_true_nor_false_positive():
    crowd_rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((20, 20), np.uint8), ((50, 10), (50, 10)))))
    crowd = {"id": 9, "image_id": 1, "category_id": 7, "bbox": [50, 50, 20, 20], "area": 400.0, "iscrowd": 1,
             "segmentation": {"size": [SIZE, SIZE], "counts": crowd_rle["counts"].decode("ascii")}}  # fmt: skip
    on_crowd = {**_prediction(1), "bbox": [50, 50, 20, 20], "score": 0.99}
    on_crowd["segmentation"] = {"size": [SIZE, SIZE], "counts": crowd_rle["counts"].decode("ascii")}
    scores = evaluate_coco(coco_ground_truth(_ground_truth([crowd])), [on_crowd, _prediction(1), _prediction(2)])
    assert pytest.approx(100.0) == scores.bbox.AP  # the top-scoring detection, on the crowd, costs nothing


def test_no_predictions_score_zero_and_stray_image_ids_are_refused():
    gt = coco_ground_truth(_ground_truth())
    assert evaluate_coco(gt, []).bbox.AP == 0.0
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_coco(gt, [{**_prediction(1), "image_id": 42}])


def test_torchvision_outputs_become_coco_results_that_pycocotools_reads(tmp_path):
    masks = torch.zeros(2, 1, SIZE, SIZE)
    masks[0, 0, 10:30, 10:30] = 0.9  # a probability over 0.5: inside
    masks[1, 0, 0:5, 0:5] = 0.4  # under 0.5: empty
    output = {
        "boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0]]),
        "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.2]), "masks": masks,
    }  # fmt: skip
    results = coco_results(output, image_id=1, category_ids=[7, 11])
    assert [r["category_id"] for r in results] == [7, 11]
    assert results[0]["bbox"] == [10.0, 10.0, 20.0, 20.0]  # x1 y1 x2 y2 -> x y w h
    decoded = mask_utils.decode({**results[0]["segmentation"], "counts": results[0]["segmentation"]["counts"]})
    assert decoded.sum() == 400 and decoded[10:30, 10:30].all()
    assert mask_utils.decode(results[1]["segmentation"]).sum() == 0
    path = write_results(tmp_path / "results.json", results)
    gt = coco_ground_truth({**_ground_truth(), "categories": [{"id": 7}, {"id": 11}]})
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = gt.loadRes(str(path))
    assert len(loaded.getAnnIds()) == 2
    with pytest.raises(ValueError, match=r"outside 1\.\.2"):
        coco_results({**output, "labels": torch.tensor([0, 1])}, image_id=1, category_ids=[7, 11])
