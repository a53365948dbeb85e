"""``anymae detect`` and ``anymae predict`` end to end on tiny COCO data: the start report of bad input, the final
line, metrics and figure, the AP against pycocotools' own COCOeval on the predictions ``anymae predict`` writes, an
exact resume, and keys refused by name."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from anymae.core.build.models import build_model
from anymae.core.cli import main
from anymae.core.config import resolve_model_config
from anymae.core.io.checkpoint import read_checkpoint, write_checkpoint
from anymae.core.train.trainer import Trainer

TINY_MODEL = {"modality": "image", "tokenizer": {"img_size": 32, "patch_size": 8, "in_chans": 3},
              "embed_dim": 16, "depth": 4, "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1,
              "decoder_num_heads": 2}  # fmt: skip
FINAL = re.compile(
    r"^finished: box AP (\d+\.\d) \(AP50 (\d+\.\d)\), mask AP (\d+\.\d) \(AP50 (\d+\.\d)\) on (\d+) held-out images$"
)
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 5, "name": "disc"}]  # ids need not be 1..K
SIZE = 64


def _image(rng: np.random.Generator, image_id: int, first_ann: int) -> tuple[Image.Image, list[dict]]:
    """A noise image with a bright square and a dark disc, and their COCO annotations (polygons)."""
    image = Image.fromarray(rng.integers(60, 190, size=(SIZE, SIZE, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(2, 24, size=2))
    square = [x, y, x + 16, y, x + 16, y + 16, x, y + 16]
    cx, cy = (int(v) for v in rng.integers(42, 54, size=2))
    disc = [v for k in range(16) for v in (cx + 8 * np.cos(k * np.pi / 8), cy + 8 * np.sin(k * np.pi / 8))]
    draw.polygon(square, fill=(250, 250, 250))
    draw.polygon(disc, fill=(10, 10, 10))
    anns = []
    for k, (category, polygon) in enumerate(((3, square), (5, disc))):
        xs, ys = polygon[0::2], polygon[1::2]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        anns.append({"id": first_ann + k, "image_id": image_id, "category_id": category, "bbox": box,
                     "segmentation": [[float(v) for v in polygon]], "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    return image, anns


def _data(root: Path, *, train: int = 6, heldout: int = 3, bad: bool = True) -> Path:
    """COCO layout; with ``bad`` the training JSON also has a listed but missing file, a corrupt file, an
    annotation of an unlisted image, one of an unknown category, a zero-size box and a negative image."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("heldout", heldout)):
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(1, count + 1):
            image, anns = _image(rng, i, 10 * i)
            image.save(folder / f"{i:03d}.png")
            images.append({"id": i, "file_name": f"{i:03d}.png", "height": SIZE, "width": SIZE})
            annotations += anns
        if bad and split == "train":
            Image.fromarray(np.full((SIZE, SIZE, 3), 120, np.uint8)).save(folder / "negative.png")
            (folder / "corrupt.png").write_bytes(b"not a png")
            images += [{"id": 100, "file_name": "negative.png", "height": SIZE, "width": SIZE},
                       {"id": 101, "file_name": "corrupt.png", "height": SIZE, "width": SIZE},
                       {"id": 102, "file_name": "missing.png", "height": SIZE, "width": SIZE}]  # fmt: skip
            box = {"bbox": [4, 4, 8, 8], "segmentation": [], "area": 64, "iscrowd": 0}
            annotations += [{"id": 900, "image_id": 999, "category_id": 3, **box},
                            {"id": 901, "image_id": 1, "category_id": 42, **box},
                            {"id": 902, "image_id": 1, "category_id": 3, **box, "bbox": [4, 4, 0, 8]},
                            {"id": 903, "image_id": 101, "category_id": 3, **box}]  # fmt: skip
        (root / "annotations").mkdir(exist_ok=True)
        coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return root


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    mae = build_model(resolve_model_config(copy.deepcopy(TINY_MODEL)))
    return write_checkpoint({"format": "anymae", "config": {"model": mae.config["model"]}, "model": mae.state_dict()},
                            path)  # fmt: skip


def _config(tmp_path: Path, data: Path, **detect: object) -> Path:
    raw = {
        "name": "det",
        "detect": {
            "checkpoint": str(_checkpoint(tmp_path / "pre.pt")),
            "backbone": "simple_pyramid", "min_size": SIZE, "max_size": SIZE, "lsj_scale": [0.8, 1.25],
            "drop_path": 0.1, "out_channels": 16, "head_channels": 16, "box_convs": 1, "box_fc": 32, "mask_convs": 1,
            "detector_options": {"rpn_pre_nms_top_n_train": 50, "rpn_post_nms_top_n_train": 20,
                                 "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20,
                                 "box_batch_size_per_image": 16, "box_score_thresh": 0.0,
                                 "box_detections_per_img": 20},
            **detect,
        },
        "data": {"root": str(data)},
        "optim": {"lr": 1e-3, "warmup_epochs": 1},
        "train": {"epochs": 2, "batch_size": 2, "num_workers": 0, "device": "cpu", "log_every_steps": 1,
                  "figure_samples": 2, "max_bad_fraction": 0.5},
    }  # fmt: skip
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One ``anymae detect`` run on the tiny data, its stdout and its run folder."""
    tmp = tmp_path_factory.mktemp("detect")
    data = _data(tmp / "data")
    config = _config(tmp, data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["detect", str(config), f"train.output_dir={tmp / 'runs'}", "--no-progress"])
    return {"code": code, "out": out.getvalue(), "err": err.getvalue(), "run": tmp / "runs" / "det", "data": data,
            "tmp": tmp}  # fmt: skip


def test_detect_reports_bad_input_trains_and_ends_with_the_final_line(trained: dict) -> None:
    assert trained["code"] == 0
    out: str = trained["out"]
    lines = out.strip().splitlines()
    assert FINAL.match(lines[-1]), lines[-1]
    assert "data train: 8 images (1 without objects), 13 objects (0 crowd)" in out  # 6 + negative + corrupt
    assert "1 images listed but not found" in out and "missing.png" in out
    assert "1 annotations of image ids not listed, e.g. ids [900]" in out
    assert "1 annotations of unknown category ids (id: annotations) {42: 1}" in out
    assert "1 boxes of zero size or outside their image dropped, e.g. annotation ids [902]" in out
    assert "1 annotations without a mask: their box is their mask" in out
    assert "skipping unreadable sample (cannot read image" in trained["err"] and "corrupt.png" in trained["err"]
    rows = [json.loads(line) for line in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    check = [r for r in rows if "eval_bbox_AP" in r][-1]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert f"eval_bbox_{key}" in check and f"eval_segm_{key}" in check
    assert check["eval_images"] == 3
    assert max(r.get("bad_samples", 0) for r in rows) >= 1  # the corrupt image, replaced and counted
    assert {"loss_classifier", "loss_mask", "loss_objectness"} <= set(next(r for r in rows if "loss" in r))
    *printed, images = FINAL.match(lines[-1]).groups()
    keys = ("eval_bbox_AP", "eval_bbox_AP50", "eval_segm_AP", "eval_segm_AP50")
    assert [float(v) for v in printed] == [round(check[k], 1) for k in keys] and images == "3"
    figure = Image.open(trained["run"] / "detections-0002.png")
    assert figure.size[0] > 2 * SIZE  # 2 held-out images side by side
    assert list(trained["run"].glob("events.out.tfevents.*"))


def test_detect_ap_equals_pycocotools_cocoeval_on_the_predictions_predict_writes(
    trained: dict, capsys: pytest.CaptureFixture
) -> None:
    run, data, tmp = trained["run"], trained["data"], trained["tmp"]
    heldout = sorted((data / "images" / "heldout").glob("*.png"))  # ids 1..3 in this order, as in the JSON
    results = tmp / "results.json"
    code = main(["predict", str(run / "checkpoint-last.pt"), *map(str, heldout), "-o", str(results), "--draw",
                 str(tmp / "drawn"), "--device", "cpu"])  # fmt: skip
    assert code == 0 and "detections on 3 images" in capsys.readouterr().out
    predictions = json.loads(results.read_text())
    assert predictions and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(predictions[0])
    assert {p["category_id"] for p in predictions} <= {3, 5}
    assert len(list((tmp / "drawn").glob("*.png"))) == 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    check = [r for r in rows if "eval_bbox_AP" in r][-1]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(data / "annotations" / "heldout.json"))
        for iou_type in ("bbox", "segm"):
            # segm without the boxes, so loadRes takes each mask's own area for APs/m/l (detectron2's
            # coco_evaluation.py pops "bbox" the same way)
            rows_of_type = [{k: v for k, v in p.items() if iou_type == "bbox" or k != "bbox"} for p in predictions]
            found = truth.loadRes(rows_of_type)
            evaluator = COCOeval(truth, found, iouType=iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            for name, value in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), evaluator.stats[:6], strict=True):
                ours = check[f"eval_{iou_type}_{name}"]
                assert (np.isnan(ours) and value < 0) or ours == pytest.approx(100 * value, abs=1e-9), (iou_type, name)
    assert check["eval_bbox_AP50"] > 0  # the comparison is not of two zeros


def test_an_interrupted_detect_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    config = _config(tmp_path, _data(tmp_path / "data", train=4, heldout=1, bad=False))

    def argv(runs: Path) -> list[str]:
        return ["detect", str(config), f"train.output_dir={runs}", "--no-progress"]

    assert main(argv(tmp_path / "a")) == 0
    original = Trainer.run_epoch

    def dies_in_epoch_2(self, epoch: int) -> None:
        if epoch == 1:
            raise RuntimeError("killed")
        original(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", dies_in_epoch_2)
    with pytest.raises(RuntimeError, match="killed"):
        main(argv(tmp_path / "b"))
    monkeypatch.setattr(Trainer, "run_epoch", original)
    capsys.readouterr()
    assert main([*argv(tmp_path / "b"), "--resume", "auto"]) == 0
    assert "resuming detect from" in capsys.readouterr().out
    a = read_checkpoint(tmp_path / "a" / "det" / "checkpoint-last.pt")
    b = read_checkpoint(tmp_path / "b" / "det" / "checkpoint-last.pt")
    assert a["progress"] == b["progress"] and a["progress"]["epoch"] == 2
    assert json.dumps(a["eval"]) == json.dumps(b["eval"])  # NaN-safe equality of every score
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert main([*argv(tmp_path / "b"), "--resume", str(tmp_path / "pre.pt")]) == 1  # a pre-training file
    assert "not an anymae detect training checkpoint" in capsys.readouterr().err


def test_detect_refuses_misspelled_and_unsupported_keys_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config(tmp_path, _data(tmp_path / "data", train=1, heldout=1, bad=False))
    assert main(["detect", str(config), "detect.backbon=fpn4"]) != 0
    assert "unknown config key 'detect.backbon'; did you mean 'backbone'?" in capsys.readouterr().err
    assert main(["detect", str(config), "train.knn=false"]) != 0
    assert "train.knn=False is not supported by anymae detect" in capsys.readouterr().err
    assert main(["detect", str(config), "detect.detector_options.rpn_topk=5"]) != 0
    assert "detector_options ['rpn_topk'] are not among" in capsys.readouterr().err
    assert main(["detect", str(config), "detect.backbone=fpn4", "detect.window=4"]) != 0
    assert "window and global_blocks are simple_pyramid's" in capsys.readouterr().err
    assert main(["detect", str(config), "detect.min_size=32"]) != 0  # lsj needs min_size == max_size
    assert "augment lsj makes max_size x max_size canvases" in capsys.readouterr().err
    assert main(["detect", str(config), "data.train_annotations=nowhere.json"]) != 0
    assert "data.train_annotations: file" in capsys.readouterr().err


def test_detector_param_groups_follow_vitdet_layer_decay_and_spare_norms_biases_and_positions() -> None:
    from anymae.core.build.adapt import make_pos_embed_learned
    from anymae.core.build.detector import build_detector, param_groups_detector

    torch.manual_seed(0)
    mae = build_model(resolve_model_config(copy.deepcopy(TINY_MODEL)), with_decoder=False)
    make_pos_embed_learned(mae.encoder)  # a trained position table, as official fine-tuning leaves it
    detector = build_detector(mae, backbone="simple_pyramid", categories=CATEGORIES, min_size=SIZE, max_size=SIZE,
                              mean=[0.5] * 3, std=[0.25] * 3, out_channels=16, head_channels=16, box_convs=1,
                              box_fc=32, mask_convs=1)  # fmt: skip
    groups = param_groups_detector(detector, weight_decay=0.1, layer_decay=0.5)
    where = {name: group for group in groups for name in group["names"]}
    assert set(where) == {name for name, _ in detector.named_parameters()}
    depth = 4  # detectron2 get_vit_lr_decay_rate: 0.5 ** (depth + 1 - layer id)
    assert where["rcnn.backbone.tokenizer.proj.weight"]["lr_scale"] == 0.5**5
    assert where["rcnn.backbone.encoder.pos_embed"]["lr_scale"] == 0.5**5
    assert where["rcnn.backbone.encoder.pos_embed"]["weight_decay"] == 0.0
    for i in range(depth):
        block = where[f"rcnn.backbone.encoder.blocks.{i}.attn.qkv.weight"]
        assert (block["lr_scale"], block["weight_decay"]) == (0.5 ** (depth - i), 0.1)
        assert where[f"rcnn.backbone.encoder.blocks.{i}.norm1.weight"]["weight_decay"] == 0.0
        assert where[f"rcnn.backbone.encoder.blocks.{i}.attn.qkv.bias"]["weight_decay"] == 0.0
    head = where["rcnn.roi_heads.box_predictor.cls_score.weight"]
    assert (head["lr_scale"], head["weight_decay"]) == (1.0, 0.1)
    assert where["rcnn.rpn.head.cls_logits.weight"]["lr_scale"] == 1.0
    assert detector.rcnn.roi_heads.box_predictor.cls_score.out_features == len(CATEGORIES) + 1  # + background


def test_train_subset_keeps_the_first_images_by_id_and_recounts_the_report(tmp_path: Path) -> None:
    from anymae.core.config import from_dict
    from anymae.modalities.image.detection import ImageDetectionDataConfig, detection_dataset

    data = from_dict(ImageDetectionDataConfig, {"root": str(_data(tmp_path)), "train_subset": 2}, "data")
    subset = detection_dataset(data, in_chans=3, split="train", augment=None)
    assert [im.id for im in subset.instances.images] == [1, 2]  # ids 1..6, 100, 101 in the JSON
    assert (subset.instances.report.images, subset.instances.report.annotations) == (2, 4)  # a square and a disc each
    assert len(subset) == 2
    heldout = detection_dataset(data, in_chans=3, split="heldout", augment=None)
    assert len(heldout) == 3  # the subset is of the training split only
