"""The benchmark scripts run end to end on a tiny config and write RESULTS-style tables (to temp paths only).

The analytic FLOP count is checked against PyTorch's own operator-level counter (``FlopCounterMode``),
which counts every matmul and convolution of an actual forward + backward pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `benchmarks` is a folder of scripts in the repository, not an installed package

from benchmarks import common, data, e2e, run_gpu_suite, step  # noqa: E402
from benchmarks.flops import SHAPES, MaeShape, block_flops, train_flops_per_sample  # noqa: E402
from benchmarks.reference_mae import ReferenceMAE  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"


@pytest.fixture
def results_untouched():
    before = RESULTS.read_text() if RESULTS.exists() else None
    yield
    assert (RESULTS.read_text() if RESULTS.exists() else None) == before, "a test wrote to benchmarks/RESULTS.md"


def _counted_train_flops(model: torch.nn.Module, x: torch.Tensor, **kwargs) -> int:
    with FlopCounterMode(display=False) as counter:
        loss = model(x, **kwargs)[0]
        loss.backward()
    return counter.get_total_flops()


def test_flop_formula_matches_pytorch_flop_counter_on_the_reference():
    torch.manual_seed(0)
    model = ReferenceMAE(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1
    )
    shape = MaeShape(
        tokens=16,
        keep=4,
        patch_in=192,
        patch_out=192,
        embed_dim=32,
        depth=2,
        mlp_ratio=4.0,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_mlp_ratio=4.0,
    )
    assert _counted_train_flops(model, torch.randn(4, 3, 32, 32)) == 4 * train_flops_per_sample(shape)


def test_flop_formula_matches_pytorch_flop_counter_on_anymae_variants():
    torch.manual_seed(0)
    for variant in ("anymae", "+pred_masked_only"):
        runner = common.build_runner(variant, "tiny", device=torch.device("cpu"))
        with FlopCounterMode(display=False) as counter:
            runner.step(torch.randn(2, 3, 32, 32))
        assert counter.get_total_flops() == 2 * runner.flops_per_sample, variant


def test_block_flops_by_hand():
    # T=10 tokens, D=8, MLP ratio 4: qkv 2*10*8*24 + scores 2*10*10*8 + values 2*10*10*8 + proj 2*10*8*8
    # + MLP 2*10*8*32 * 2 = 3840 + 1600 + 1600 + 1280 + 10240
    assert block_flops(10, 8, 4.0) == 3840 + 1600 + 1600 + 1280 + 10240
    # a 4-token window replaces the 10x10 score and value products with 10x4 ones
    assert block_flops(10, 8, 4.0, window=4) == 3840 + 640 + 640 + 1280 + 10240


def test_flop_shapes_cover_video_and_audio_token_counts():
    assert SHAPES["videomae_b"].tokens == 1568 and SHAPES["videomae_b"].keep == 160
    assert SHAPES["audiomae_b"].tokens == 512 and SHAPES["audiomae_b"].keep == 102
    # larger models cost more per sample
    costs = [train_flops_per_sample(SHAPES[k]) for k in ("vit_b16", "vit_l16", "vit_h14")]
    assert costs == sorted(costs)


def test_write_section_replaces_only_its_own_block(tmp_path):
    path = tmp_path / "RESULTS.md"
    common.write_section(path, machine="CPU X", script="step", markdown="old step")
    common.write_section(path, machine="GPU Y", script="step", markdown="gpu step")
    common.write_section(path, machine="CPU X", script="step", markdown="new step")
    text = path.read_text()
    assert "new step" in text and "old step" not in text and "gpu step" in text
    assert text.count("<!-- begin cpu-x/step -->") == 1


def test_the_first_gpu_block_replaces_the_pending_gpu_rows(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# R\n\n<!-- begin pending-gpu -->\n| H100 | not measured |\n<!-- end pending-gpu -->\n")
    common.write_section(path, machine="CPU X", script="step", markdown="cpu rows")
    assert "not measured" in path.read_text()
    common.write_section(path, machine="NVIDIA H100 80GB HBM3", script="step", markdown="gpu rows")
    assert "not measured" not in path.read_text() and "gpu rows" in path.read_text()


def test_step_quick_runs_and_writes_a_table(tmp_path, results_untouched):
    out = tmp_path / "results.md"
    argv = ["--quick", "--variants", "reference,optimized", "--no-memory"]
    assert step.main([*argv, "--results", str(out)]) == 0
    text = out.read_text()
    for needle in ("| reference |", "| optimized |", "samples/s", "vs reference", "MFU", "GFLOP/s", "1.00x"):
        assert needle in text, needle
    assert len([line for line in text.splitlines() if line.startswith("| tiny")]) == 2


@pytest.mark.parametrize("arch", ["tiny_video", "tiny_audio"])
def test_step_times_video_and_audio_against_anymae_with_every_option_off(tmp_path, results_untouched, arch):
    out = tmp_path / "results.md"
    argv = ["--arch", arch, "--batch", "2", "--reps", "1", "--steps", "1", "--warmup", "0", "--no-memory"]
    assert step.main([*argv, "--variants", "reference,optimized", "--results", str(out)]) == 0
    text = out.read_text()
    assert "vs anymae" in text and "| anymae |" in text and "| optimized |" in text and "| reference |" not in text


def test_memory_probe_runs_in_a_fresh_process_and_reports_its_own_peak():
    # The parent holds a large tensor: a probe that inherited the parent's peak (ru_maxrss does, across
    # fork + exec) would report more than it.
    ballast = torch.ones(512, 2**20)  # 2 GiB
    result = common.measure_memory("reference", "tiny", batch=2, device="cpu", steps=1)
    assert 0 < result["rss_imports_mib"] <= result["peak_rss_mib"] < 1500  # imports alone: about 650 MiB
    del ballast


def test_data_and_e2e_quick_run_and_write_tables(tmp_path, results_untouched):
    out = tmp_path / "results.md"
    assert data.main(["--quick", "--results", str(out)]) == 0
    assert e2e.main(["--quick", "--results", str(out)]) == 0
    text = out.read_text()
    assert "| pil (anymae = official) |" in text and "torchvision-io" in text
    assert "| reference |" in text and "| optimized |" in text
    if not torch.cuda.is_available():
        assert "not measured: no CUDA" in text


def test_gpu_suite_dry_path_runs_on_cpu(tmp_path, results_untouched):
    out = tmp_path / "results.md"
    assert run_gpu_suite.main(["--quick", "--results", str(out), "--no-memory"]) == 0
    assert "Compute-only step" in out.read_text()


def test_small_labelled_set_fewer_labels_is_a_subset_with_the_same_held_out_crops(tmp_path):
    """Issue 21's fewer-labels comparisons change nothing but the labels: ``labelled_per_class`` keeps the first
    crops of the full set, and the held-out crops are byte-identical."""
    from benchmarks.small_labelled_set import build

    full = build(tmp_path / "full", train_per_class=6, heldout_per_class=3, size=16)
    few = build(tmp_path / "few", train_per_class=6, heldout_per_class=3, size=16, labelled_per_class=2)
    classes = sorted(p.name for p in (full / "train").iterdir())
    assert len(classes) == 10 and sorted(p.name for p in (few / "train").iterdir()) == classes
    for name in classes:
        kept = sorted(p.name for p in (few / "train" / name).iterdir())
        assert kept == ["0000.png", "0001.png"]
        for file in kept:
            assert (few / "train" / name / file).read_bytes() == (full / "train" / name / file).read_bytes()
        held_out = sorted((full / "val" / name).iterdir())
        assert len(held_out) == 3
        for file in held_out:
            assert (few / "val" / name / file.name).read_bytes() == file.read_bytes()


def test_small_labelled_set_equalised_crops_keep_only_structure(tmp_path):
    """``--equalised`` crops are grey with a fixed mean and contrast: a hand-computed 2x2 case, a flat crop, and a
    crop and its brighter, lower-contrast copy give the same pixels (only structure tells the photos apart)."""
    import numpy as np
    from PIL import Image

    from benchmarks.small_labelled_set import build, equalise

    step = np.array([[0, 0], [255, 255]], dtype=np.uint8)  # mean 127.5, std 127.5: z = -1, +1
    assert np.array_equal(equalise(np.repeat(step[:, :, None], 3, axis=2))[:, :, 0], [[80, 80], [176, 176]])
    assert np.array_equal(equalise(np.full((4, 4, 3), 17, np.uint8)), np.full((4, 4, 3), 128))
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (8, 8)).astype(np.float64)
    crop = np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)
    washed = np.repeat((60 + 0.5 * grey)[:, :, None], 3, axis=2).round().astype(np.uint8)
    assert np.abs(equalise(crop).astype(int) - equalise(washed).astype(int)).max() <= 2  # rounding of `washed`
    root = build(tmp_path / "eq", train_per_class=2, heldout_per_class=1, size=16, equalised=True)
    pixels = np.asarray(Image.open(root / "train" / "coffee" / "0000.png"))
    assert pixels.shape == (16, 16, 3) and (pixels == pixels[:, :, :1]).all()
    assert abs(pixels.mean() - 128) < 3 and abs(pixels.std() - 48) < 3
