"""The shipped examples, installed as real distributions with pip: the time-series modality and the template."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_plugins import plugin_rows

from anymae.core.cli import main
from anymae.core.model.masking import keep_count, shuffle_from_noise
from anymae.plugins import get_registry, reset_registry
from anymae.testing import check_modality

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_MODULES = ("anymae_timeseries", "anymae_myplugin")


@pytest.fixture(scope="module")
def examples_site(tmp_path_factory: pytest.TempPathFactory):
    """Both examples pip-installed into one folder playing site-packages, on sys.path for this module.

    Module-scoped (not session-scoped) so that the extra plugins are gone before other test files run.
    """
    root = tmp_path_factory.mktemp("examples")
    site = root / "site"
    for name in ("anymae-timeseries", "plugin-template"):
        # A copy, so that the in-tree build leaves no build/ or *.egg-info in the repository.
        source = shutil.copytree(EXAMPLES / name, root / name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        subprocess.run(
            [*pip, "--target", str(site), str(source)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    sys.path.insert(0, str(site))
    reset_registry()
    yield site
    sys.path.remove(str(site))
    for name in list(sys.modules):
        if name.split(".")[0] in EXAMPLE_MODULES:
            del sys.modules[name]
    reset_registry()


def _run_cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "anymae.core.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_plugins_command_lists_both_example_distributions(examples_site, capsys):
    assert main(["plugins"]) == 0
    rows = plugin_rows(capsys.readouterr().out)
    assert rows["timeseries"] == ["modality:timeseries", "anymae-timeseries", "0.1.0", "loaded"]
    assert rows["myplugin"] == ["masking:block", "anymae-myplugin", "0.1.0", "loaded"]


def test_timeseries_satisfies_the_modality_contract(examples_site):
    check_modality("timeseries", tokenizer={"channels": 3, "length": 64, "patch_size": 8})


def test_template_block_masking_keeps_int_L_times_one_minus_ratio(examples_site):
    block = get_registry().masking_strategy("block")
    for grid in [(16,), (6, 8)]:
        noise, len_keep = block(batch=3, grid=grid, mask_ratio=0.75, device=torch.device("cpu"))
        num_tokens = int(np.prod(grid))
        assert noise.shape == (3, num_tokens)
        assert len_keep == keep_count(num_tokens, 0.75)
        _, _, mask = shuffle_from_noise(noise, len_keep)
        assert (mask.sum(1) == num_tokens - len_keep).all()


def test_timeseries_demo_pretrains_and_visualizes_from_the_cli(examples_site, tmp_path):
    import anymae_timeseries

    config = anymae_timeseries.demo_config()
    assert config.is_file() and str(config).startswith(str(examples_site))  # shipped as package data
    proc = _run_cli(examples_site, "pretrain", str(config), "train.epochs=1", f"train.output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "timeseries_demo"
    assert (run / "checkpoint-0001.pt").is_file()
    assert (run / "reconstruction.png").is_file()

    series = tmp_path / "series.npy"
    np.save(series, np.random.default_rng(0).standard_normal((200, 3)).astype(np.float32))  # (T_total, C)
    out = tmp_path / "out.png"
    proc = _run_cli(examples_site, "visualize", str(run / "checkpoint-0001.pt"), str(series), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert_plot_shows_the_series_and_its_removed_spans(out, np.load(series).T[:, :128], patch=8, removed=8)


def assert_plot_shows_the_series_and_its_removed_spans(path: Path, series: np.ndarray, *, patch: int, removed: int):
    """The time-series figure of one sample (channels (C, T), before standardization): per channel a panel at
    the plugin's documented layout, where every patch's span is grey (removed) or white (kept), the same spans
    in every channel and ``removed`` of them; the black line is the standardized series everywhere, the red
    reconstruction is drawn on removed spans only."""
    from anymae_timeseries.visualize import HEADER, PAD, PANEL_H

    figure = np.asarray(Image.open(path).convert("RGB"))
    channels, steps = series.shape
    step = (figure.shape[1] - 2 * PAD) // steps  # pixels per time step
    # standardized with the whole file's statistics (the plugin's load_inputs), std unbiased as torch's
    x = (series - series.mean(1, keepdims=True)) / (series.std(1, ddof=1, keepdims=True) + 1e-6)
    colour = lambda block, rgb: (block == rgb).all(axis=-1)  # noqa: E731
    spans = []
    for ch in range(channels):
        top = HEADER + ch * (PANEL_H + PAD)
        inside = figure[top + 1 : top + PANEL_H - 1]
        grey = []
        for k in range(steps // patch):
            # 2 px off each edge: the red line (width 2) may start a pixel left of its span
            block = inside[:, PAD + k * patch * step + 2 : PAD + (k + 1) * patch * step - 2]
            is_grey, is_white = colour(block, (205, 205, 205)).mean(), colour(block, (255, 255, 255)).mean()
            assert max(is_grey, is_white) > 0.5, (ch, k)  # a span is one or the other
            grey.append(is_grey > 0.5)
            assert colour(block, (0, 0, 0)).any(), (ch, k)  # the series is drawn on every span
            assert colour(block, (220, 30, 30)).any() == grey[-1], (ch, k)  # reconstruction on removed spans only
        spans.append(grey)
        lo, scale = x[ch].min(), (PANEL_H - 4) / (x[ch].max() - x[ch].min())
        for s in range(steps):  # each sample point of the black line sits at the value's height (+-1 px)
            y = round(top + PANEL_H - 2 - (x[ch, s] - lo) * scale)
            near = figure[y - 1 : y + 2, PAD + s * step]
            drawn_over = grey[s // patch] and colour(near, (220, 30, 30)).any()  # red is drawn after black
            assert colour(near, (0, 0, 0)).any() or drawn_over, (ch, s)
    assert all(grey == spans[0] for grey in spans) and sum(spans[0]) == removed


def test_a_composite_with_the_third_party_timeseries_part_trains_resumes_and_round_trips(examples_site, tmp_path):
    """Issue 18: a part can be any registered modality, a pip-installed one included."""
    import shutil

    from conftest import make_image, write_image

    from anymae.core.config import resolve_config
    from anymae.core.model.composite import MultiModalMAE
    from anymae.core.train.task_pretrain import pretrain
    from anymae.core.weights.loading import load_model
    from anymae.testing import check_composite

    parts = {
        "series": {"modality": "timeseries", "tokenizer": {"channels": 2, "length": 64, "patch_size": 8}},
        "image": {"tokenizer": {"img_size": 32, "patch_size": 8}, "mask_ratio": 0.5, "loss_weight": 2.0},
    }
    check_composite(parts)
    for i in range(8):  # 8 images and 2 series x 4 windows: paired by index (the series have no files)
        write_image(tmp_path / "images" / "train" / f"i{i}.png", make_image(i, size=(40, 40)))

    def config(name: str) -> object:
        return resolve_config({
            "name": name,
            "model": {"modality": "composite", "parts": parts, "embed_dim": 32, "depth": 1, "num_heads": 2,
                      "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2, "modality_dropout": 0.2},
            "data": {"series": {"num_series": 2, "series_length": 256, "windows_per_series": 4, "heldout_fraction": 0},
                     "image": {"root": str(tmp_path / "images"), "heldout_split": None}},
            "optim": {"lr": 1e-3, "warmup_epochs": 1},
            "train": {"epochs": 2, "batch_size": 4, "num_workers": 0, "device": "cpu", "save_every_epochs": 1,
                      "output_dir": str(tmp_path / "runs"), "run_name": name},
        })  # fmt: skip

    straight = pretrain(config("straight"), progress=False)
    (tmp_path / "runs" / "resumed").mkdir()
    first = shutil.copy(straight.run_dir / "checkpoint-0001.pt", tmp_path / "runs" / "resumed")
    resumed = pretrain(config("resumed"), resume=str(first), progress=False)
    a, b = torch.load(straight.checkpoint, weights_only=False), torch.load(resumed.checkpoint, weights_only=False)
    assert all(torch.equal(value, b["model"][key]) for key, value in a["model"].items())
    model = load_model(straight.checkpoint)
    assert isinstance(model, MultiModalMAE) and list(model.parts) == ["series", "image"]
    assert type(model.parts["series"].tokenizer).__module__.startswith("anymae_timeseries")
