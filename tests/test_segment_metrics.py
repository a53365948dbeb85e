"""Segmentation scores against scikit-learn's confusion matrix, and sliding-window inference against a whole-image
forward of a model that acts on each pixel alone (a 1x1 convolution), where the two must agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from anymae.core.evaluate.segmentation import (
    ConfusionMatrix,
    confusion_matrix,
    crop_origins,
    segment_image,
    slide_inference,
)

IGNORE = 255


def _labels(rng: np.random.Generator, shape: tuple[int, ...], classes: list[int]) -> np.ndarray:
    return rng.choice(classes, size=shape).astype(np.int64)


def test_scores_match_scikit_learn_with_ignored_pixels_and_an_absent_class():
    rng = np.random.default_rng(0)
    k = 6
    present = [0, 1, 2, 4, 5]  # class 3 is in neither truth nor prediction: no IoU, left out of the mean
    truth = _labels(rng, (3, 17, 23), present)
    pred = np.where(rng.random(truth.shape) < 0.6, truth, _labels(rng, truth.shape, present))
    truth[rng.random(truth.shape) < 0.2] = IGNORE

    meter = ConfusionMatrix(num_classes=k, ignore_index=IGNORE)
    for i in range(3):  # batch by batch: the sum is what is scored
        meter.update(torch.from_numpy(pred[i : i + 1]), torch.from_numpy(truth[i : i + 1]))
    scores = meter.scores()

    keep = truth != IGNORE
    cm = sk_confusion_matrix(truth[keep], pred[keep], labels=list(range(k)))
    np.testing.assert_array_equal(meter.matrix.numpy(), cm)
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore"):
        iou = tp / union
    assert math.isnan(scores.per_class_iou[3]) and union[3] == 0
    np.testing.assert_allclose(scores.per_class_iou, iou, rtol=1e-12, equal_nan=True)
    assert scores.miou == pytest.approx(np.nanmean(iou), rel=1e-12)
    assert scores.pixel_accuracy == pytest.approx((truth[keep] == pred[keep]).mean(), rel=1e-12)
    assert scores.pixels == keep.sum()


def test_a_hand_computed_confusion_gives_its_iou():
    truth = torch.tensor([[0, 0, 1, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 0]])
    meter = ConfusionMatrix(num_classes=2)
    meter.update(pred, truth)
    scores = meter.scores()
    # class 0: TP 1, FN 1 (a 0 called 1), FP 0 -> 1/2; class 1: TP 1, FP 1 -> 1/2; the ignored pixel is not counted
    assert scores.per_class_iou == (0.5, 0.5) and scores.miou == 0.5
    assert scores.pixel_accuracy == pytest.approx(2 / 3) and scores.pixels == 3


def test_a_truth_outside_the_classes_is_refused_not_scored():
    with pytest.raises(ValueError, match=r"truth has class indices \[7\] outside 0..2"):
        confusion_matrix(torch.zeros(1, 4), torch.tensor([[0, 7, 1, IGNORE]]), num_classes=3)


@pytest.mark.parametrize(("size", "crop", "stride", "origins"), [(10, 4, 3, [0, 3, 6]), (11, 4, 3, [0, 3, 6, 7]),
                                                                 (4, 4, 3, [0]), (512, 512, 341, [0])])  # fmt: skip
def test_crop_origins_follow_mmseg_slide_inference(size, crop, stride, origins):
    # mmseg: h_grids = max(H - crop + stride - 1, 0) // stride + 1; y1 = i * stride; y2 = min(y1 + crop, H);
    # y1 = max(y2 - crop, 0)
    assert crop_origins(size, crop, stride) == origins


@pytest.mark.parametrize("size", [(37, 50), (20, 13), (24, 24)])
def test_slide_inference_of_a_pointwise_model_equals_the_whole_image_forward(size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, kernel_size=1)
    seen: list[tuple[int, int]] = []

    def model(window: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(window.shape[-2:]))
        return conv(window)

    image = torch.randn(2, 3, *size)
    with torch.no_grad():
        slid = slide_inference(model, image, num_classes=5, crop=(24, 24), stride=(16, 16))
        whole = conv(image)
    torch.testing.assert_close(slid, whole, rtol=1e-6, atol=1e-6)
    assert set(seen) == {(24, 24)}  # the model only ever sees whole crops (small images are padded)


def test_flip_and_scales_average_the_softmax_of_each_view():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, kernel_size=1)

    def model(window: torch.Tensor) -> torch.Tensor:  # not mirror-symmetric: a ramp across the columns
        ramp = torch.linspace(0, 1, window.shape[-1])
        return conv(window) + torch.stack([ramp, -ramp, 0 * ramp])[None, :, None, :]

    def tiled(x: torch.Tensor) -> torch.Tensor:  # 16x16 tiles side by side: what crop 16, stride 16 means
        rows = [torch.cat([model(x[..., y : y + 16, c : c + 16]) for c in range(0, x.shape[-1], 16)], -1)
                for y in range(0, x.shape[-2], 16)]  # fmt: skip
        return torch.cat(rows, -2)

    image = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        got = segment_image(model, image, num_classes=3, crop=(16, 16), stride=(16, 16), flip=True, scales=(1.0, 2.0))
        big = torch.nn.functional.interpolate(image, size=(32, 32), mode="bilinear", align_corners=False)
        views = []
        for x in (image, big):
            for mirrored in (False, True):
                p = tiled(x.flip(-1) if mirrored else x).softmax(1)
                p = p.flip(-1) if mirrored else p
                views.append(torch.nn.functional.interpolate(p, size=(16, 16), mode="bilinear", align_corners=False))
    torch.testing.assert_close(got, torch.stack(views).mean(0))
