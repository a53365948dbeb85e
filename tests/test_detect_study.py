"""The detection study's pool writer and its results table (``benchmarks/detect_study.py``), without training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anymae.modalities.image.data import demo_photos_root, find_images
from anymae.modalities.image.detect_demo import SPLITS, make_demo_image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `benchmarks` is a folder of scripts in the repository, not an installed package

from benchmarks import detect_study  # noqa: E402


def test_pool_seeds_use_no_seed_of_the_demo_training_or_heldout_images():
    pool = set(detect_study.pool_seeds(10_000))
    for first, count in SPLITS.values():
        assert pool.isdisjoint(range(first, first + count))


def test_pool_seeds_overlapping_a_demo_split_are_refused(monkeypatch):
    monkeypatch.setattr(detect_study, "POOL_FIRST_SEED", SPLITS["heldout"][0] - 5)
    with pytest.raises(ValueError, match="overlap the demo's heldout seeds"):
        detect_study.pool_seeds(10)


def test_the_pool_is_demo_images_drawn_on_the_training_photographs(tmp_path):
    detect_study.make_pool(tmp_path, unlabelled=3)
    files = sorted((tmp_path / "train").iterdir())
    assert [f.name for f in files] == [f"{s:07d}.png" for s in detect_study.pool_seeds(3)]
    seed = detect_study.POOL_FIRST_SEED + 1
    expected, _ = make_demo_image(seed, find_images(demo_photos_root() / "train"))
    np.testing.assert_array_equal(np.asarray(Image.open(files[1])), expected)


def _check(step: int, box: float, mask: float) -> dict[str, float]:
    return {"step": step, "eval_bbox_AP": box, "eval_bbox_AP50": 2 * box, "eval_segm_AP": mask,
            "eval_segm_AP50": 2 * mask}  # fmt: skip


def test_results_line_is_the_last_check_with_the_first_best_box_ap():
    checks = [_check(10, 3.0, 1.0), _check(20, 5.0, 4.0), _check(30, 5.0, 6.0), _check(40, 2.0, 2.5)]
    line = detect_study.results_line(checks, labels=50, start="random", tag="t", overrides=[], minutes=1.23, run="r")
    assert (line["steps"], line["box_ap"], line["box_ap50"], line["mask_ap"], line["mask_ap50"]) == (40, 2, 4, 2.5, 5)
    assert (line["best_box_ap"], line["best_mask_ap"], line["best_step"], line["checks"]) == (5.0, 4.0, 20, 4)
    assert line["minutes"] == 1.2


def test_report_writes_one_row_per_jsonl_line_into_its_marked_section(tmp_path):
    lines = [
        detect_study.results_line([_check(1002, 1.5, 2.25)], labels=50, start="random", tag="shipped", overrides=[],
                                  minutes=9.0, run="a"),
        detect_study.results_line([_check(1002, 7.0, 8.0)], labels=50, start="x/pool/checkpoint-0020.pt",
                                  tag="ld1", overrides=["detect.layer_decay=1.0"], minutes=9.5, run="b"),
    ]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nother section\n")
    detect_study.report(tmp_path, results=results)
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\nother section\n")
    assert "| 50 | random | shipped | - | 1002 | 1.5 (3.0) | 2.2 (4.5) | 1.5 / 2.2 (1002) | 9.0 |" in text
    assert "| 50 | MAE (20 ep.) | ld1 | detect.layer_decay=1.0 | 1002 | 7.0 (14.0) | 8.0 (16.0) |" in text
    assert text.count("/detect_study -->") == 2
