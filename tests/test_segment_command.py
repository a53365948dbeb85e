"""``anymae segment`` end to end on tiny data: the final line, metrics and figure, the mIoU against scikit-learn's
confusion matrix on the command's own predictions, unusable samples named and counted, an exact resume, and a
misspelled key refused."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from anymae.core.build.models import build_model
from anymae.core.build.segmenter import build_segmenter
from anymae.core.cli import main
from anymae.core.config import resolve_model_config
from anymae.core.evaluate import segmentation
from anymae.core.io.checkpoint import read_checkpoint, write_checkpoint
from anymae.core.train.trainer import Trainer
from anymae.core.weights.loading import load_model

TINY_MODEL = {"modality": "image", "tokenizer": {"img_size": 32, "patch_size": 4, "in_chans": 3},
              "embed_dim": 16, "depth": 4, "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1,
              "decoder_num_heads": 2}  # fmt: skip
FINAL = re.compile(r"^finished: mIoU (\d+\.\d\d)% \(pixel accuracy (\d+\.\d\d)%\) on (\d+) held-out images$", re.M)


def _pair(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A noise image with a bright square (class 1) and a dark disc (class 2) on background 0; a 255 border row."""
    image = rng.integers(60, 190, size=(size, size, 3)).astype(np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    y, x = rng.integers(2, size - 12, size=2)
    image[y : y + 10, x : x + 10], mask[y : y + 10, x : x + 10] = 250, 1
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(6, size - 6, size=2)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
    image[disc], mask[disc] = 10, 2
    mask[0] = 255
    return image, mask


def _data(root: Path, *, train: int = 8, heldout: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("training", train), ("validation", heldout)):
        for folder in ("images", "annotations"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = _pair(rng)
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(mask, mode="L").save(root / "annotations" / split / f"{i:03d}.png")
    return root


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    mae = build_model(resolve_model_config(copy.deepcopy(TINY_MODEL)))
    return write_checkpoint({"format": "anymae", "config": {"model": mae.config["model"]}, "model": mae.state_dict()},
                            path)  # fmt: skip


def _config(tmp_path: Path, data: Path, **segment: object) -> Path:
    raw = {
        "name": "seg",
        "segment": {
            "checkpoint": str(_checkpoint(tmp_path / "pre.pt")),
            "head": "upernet",
            "channels": 8,
            "eval_stride": 10,
            **segment,
        },
        "data": {"root": str(data), "num_classes": 3, "photometric": False},
        "optim": {"lr": 1e-3, "warmup_epochs": 1},
        "train": {
            "epochs": 2,
            "batch_size": 4,
            "num_workers": 0,
            "device": "cpu",
            "log_every_steps": 1,
            "figure_samples": 2,
        },
    }
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_segment_trains_prints_the_final_line_and_writes_metrics_and_a_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config(tmp_path, _data(tmp_path / "data"))
    assert main(["segment", str(config), f"train.output_dir={tmp_path / 'runs'}", "--no-progress"]) == 0
    out = capsys.readouterr().out
    found = FINAL.findall(out)
    assert len(found) == 1 and found[0][2] == "4"
    run = tmp_path / "runs" / "seg"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    checks = [r for r in rows if "eval_miou" in r]
    assert [r["epoch"] for r in checks] == [1, 2]
    assert f"{checks[-1]['eval_miou']:.2f}" == found[0][0]
    assert f"{checks[-1]['eval_pixel_accuracy']:.2f}" == found[0][1]
    assert {"eval_iou_0", "eval_iou_1", "eval_iou_2"} <= set(checks[-1])
    assert (run / "checkpoint-best.pt").is_file() and (run / "checkpoint-last.pt").is_file()
    with Image.open(run / "segmentation-0002.png") as figure:  # 2 rows of image / truth / prediction, 48 px cells
        assert figure.size == (3 * 48 + 2 * 2, 2 * 48 + 2)
    assert read_checkpoint(run / "checkpoint-last.pt")["format"] == "anymae-segmenter"


def test_segment_miou_equals_scikit_learns_on_the_commands_own_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = segmentation.ConfusionMatrix.update

    def update(self, pred, target):
        seen.append((pred.numpy().ravel(), target.numpy().ravel()))
        real(self, pred, target)

    monkeypatch.setattr(segmentation.ConfusionMatrix, "update", update)
    config = _config(tmp_path, _data(tmp_path / "data"))
    assert main(["segment", str(config), "train.epochs=1", f"train.output_dir={tmp_path}", "--no-progress"]) == 0
    miou, accuracy, images = FINAL.findall(capsys.readouterr().out)[0]
    assert len(seen) == int(images) == 4
    pred = np.concatenate([p for p, _ in seen])
    truth = np.concatenate([t for _, t in seen])
    keep = truth != 255
    matrix = sk_confusion_matrix(truth[keep], pred[keep], labels=[0, 1, 2])
    tp = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - tp
    expected = 100 * np.mean(tp[union > 0] / union[union > 0])
    assert f"{expected:.2f}" == miou
    assert f"{100 * tp.sum() / matrix.sum():.2f}" == accuracy
    row = [json.loads(line) for line in (tmp_path / "seg" / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["eval_miou"] == pytest.approx(expected, abs=1e-9)


def test_segment_names_skips_and_counts_unusable_samples(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _data(tmp_path / "data")
    wrong = Image.new("L", (16, 16))  # a training mask of another size than its image
    wrong.save(data / "annotations" / "training" / "000.png")
    (data / "annotations" / "validation" / "003.png").unlink()  # a held-out image without a mask
    config = _config(tmp_path, data)
    argv = ["segment", str(config), "train.epochs=1", f"train.output_dir={tmp_path}", "--no-progress"]
    assert main([*argv, "train.max_bad_fraction=0.5"]) == 0
    captured = capsys.readouterr()
    assert "training/000.png is 16x16 but image" in captured.err and "003.png has no mask" in captured.err
    assert FINAL.findall(captured.out)[0][2] == "3" and "1 unusable held-out images skipped" in captured.out
    rows = [json.loads(line) for line in (tmp_path / "seg" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval_skipped"] == 1 and max(r.get("bad_samples", 0) for r in rows) == 1


def test_an_interrupted_segment_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    config = _config(tmp_path, _data(tmp_path / "data"))

    def argv(runs: Path) -> list[str]:
        return ["segment", str(config), f"train.output_dir={runs}", "--no-progress"]

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
    assert "resuming segment from" in capsys.readouterr().out
    a = read_checkpoint(tmp_path / "a" / "seg" / "checkpoint-last.pt")
    b = read_checkpoint(tmp_path / "b" / "seg" / "checkpoint-last.pt")
    assert a["progress"] == b["progress"] and a["progress"]["epoch"] == 2 and a["eval"] == b["eval"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert main([*argv(tmp_path / "b"), "--resume", str(tmp_path / "pre.pt")]) == 1  # a pre-training file
    assert "not an anymae segment training checkpoint" in capsys.readouterr().err


def test_segment_refuses_a_misspelled_key_and_an_unsupported_setting_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config(tmp_path, _data(tmp_path / "data", train=1, heldout=1))
    assert main(["segment", str(config), "segment.hed=linear"]) != 0
    assert "unknown config key 'segment.hed'; did you mean 'head'?" in capsys.readouterr().err
    assert main(["segment", str(config), "segment.rel_pos_bias=true"]) != 0
    assert "segment.rel_pos_bias=True is not supported by anymae segment" in capsys.readouterr().err
    assert main(["segment", str(config), "segment.head=linear"]) != 0  # linear has no channels option
    assert "segment.channels: the 'linear' head has no such option" in capsys.readouterr().err
    assert main(["segment", str(config), "data.num_classes=300"]) != 0  # 255 would be a class
    assert "ignore_index 255 is one of the classes" in capsys.readouterr().err


@pytest.mark.parametrize(("head", "layers"), [("upernet", None), ("linear", [1])])
def test_every_segmenter_parameter_gets_a_gradient(tmp_path: Path, head: str, layers: list[int] | None) -> None:
    """DDP needs every parameter used: the final norm (the maps are taken before it) and the blocks after the
    deepest one read are removed, not left idle."""
    options = {"channels": 8} if head == "upernet" else {}
    model = build_segmenter(load_model(_checkpoint(tmp_path / "pre.pt")), head=head, num_classes=3, crop=(32, 32),
                            layers=layers, head_options=options)  # fmt: skip
    logits, aux = model(torch.randn(2, 3, 32, 32))
    (logits.sum() + (aux.sum() if aux is not None else 0)).backward()
    idle = [name for name, p in model.named_parameters() if p.grad is None]
    assert not idle, idle
    assert len(model.encoder.blocks) == (4 if layers is None else 2)
