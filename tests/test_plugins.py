"""The plugin system: entry-point discovery, third-party distributions, broken plugins, the CLI listing."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from plugin_fixtures import (
    BROKEN_PLUGIN_SOURCE,
    TOYSEQ_PLUGIN_SOURCE,
    masking_plugin,
    modality_plugin,
    stub_modality,
    write_distribution,
)

import anymae.plugins.builtin
from anymae.core import pretrain
from anymae.core.build.models import build_model
from anymae.core.cli import main
from anymae.core.config import ConfigError, resolve_config
from anymae.core.io.checkpoint import read_checkpoint
from anymae.core.model.masking import random_masking
from anymae.core.weights.loading import load_model
from anymae.plugins import (
    DuplicateNameError,
    PluginError,
    get_registry,
    hookimpl,
    load_registry,
    reset_registry,
)

ANYMAE_VERSION = metadata.version("anymae")
ENV_SWITCHES = ("ANYMAE_DISABLE_PLUGINS", "ANYMAE_STRICT_PLUGINS", "ANYMAE_TRACE_PLUGINS")


@pytest.fixture(autouse=True)
def clean_plugin_state(monkeypatch: pytest.MonkeyPatch):
    """Every test starts without plugin env switches and with no process-wide registry, and leaves none."""
    for name in ENV_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def site_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder on sys.path playing site-packages; modules imported from it are forgotten afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    reset_registry()
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(site)):
            del sys.modules[name]


@pytest.fixture
def toyseq_dist(site_dir: Path) -> Path:
    """The toyseq plugin installed as distribution ``toyseq-plugin`` 0.1, entry point ``toyseq``."""
    write_distribution(
        site_dir,
        name="toyseq-plugin",
        version="0.1",
        modules={"toyseq_plugin": TOYSEQ_PLUGIN_SOURCE},
        entry_points={"toyseq": "toyseq_plugin"},
    )
    reset_registry()
    return site_dir


@pytest.fixture
def broken_dist(site_dir: Path) -> Path:
    """Distribution ``broken-plugin`` 0.3 whose module raises ImportError when the entry point loads."""
    write_distribution(
        site_dir,
        name="broken-plugin",
        version="0.3",
        modules={"broken_plugin": BROKEN_PLUGIN_SOURCE},
        entry_points={"broken": "broken_plugin"},
    )
    reset_registry()
    return site_dir


def plugin_rows(out: str) -> dict[str, list[str]]:
    """``anymae plugins`` output -> {plugin: [registers, distribution, version, status]}."""
    rows = {}
    for line in out.splitlines():
        if line and not line.startswith((" ", "plugin ")):
            cells = re.split(r"\s{2,}", line.strip(), maxsplit=4)
            rows[cells[0]] = cells[1:]
    return rows


def toyseq_config(output_dir: Path) -> dict:
    return {
        "name": "toyseq-demo",
        "model": {
            "modality": "toyseq",
            "masking": "every_other",
            "tokenizer": {"length": 32, "patch_size": 4, "in_chans": 2},
            "embed_dim": 32,
            "depth": 1,
            "num_heads": 2,
            "decoder_embed_dim": 16,
            "decoder_depth": 1,
            "decoder_num_heads": 2,
        },
        "data": {"num_train": 16, "num_heldout": 4},
        "optim": {"warmup_epochs": 1},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "num_workers": 0,
            "device": "cpu",
            "output_dir": str(output_dir),
            "save_every_epochs": 1,
            "heldout_batches": 1,
            "figure_samples": 2,
        },
    }


IMAGE_REGISTERS = "modality:image, checkpoint:official-mae, checkpoint:hf-vitmae, command:image-stats"


# --- built-in plugins through entry points -------------------------------------------------------------
def test_entry_points_register_image_modality_and_random_masking_from_anymae():
    registry = load_registry()
    assert registry.modalities["image"].plugin == "image"
    assert registry.masking["random"].plugin == "builtin"
    assert registry.masking_strategy("random") is random_masking
    for name in ("image", "builtin"):
        info = registry.plugins[name]
        assert (info.distribution, info.version, info.status) == ("anymae", ANYMAE_VERSION, "loaded")
    # The image checkpoint formats are the image plugin's own, like VideoMAE's and AudioMAE's (issue 14).
    assert registry.plugins["image"].registers == [
        "modality:image",
        "checkpoint:official-mae",
        "checkpoint:hf-vitmae",
        "command:image-stats",
    ]
    assert registry.plugins["builtin"].registers == [
        "masking:random",
        "target:pixels",
        "target:norm_pix",
        "decoder:global",
        "segmentation:linear",
        "segmentation:upernet",
    ]


def test_get_registry_is_built_once_and_rebuilt_after_reset():
    first = get_registry()
    assert get_registry() is first
    reset_registry()
    assert get_registry() is not first


def test_plugins_command_lists_builtin_plugins_with_distribution_version_and_status(capsys):
    assert main(["plugins"]) == 0
    rows = plugin_rows(capsys.readouterr().out)
    assert rows["image"] == [IMAGE_REGISTERS, "anymae", ANYMAE_VERSION, "loaded"]
    builtins = (
        "masking:random, target:pixels, target:norm_pix, decoder:global, segmentation:linear, segmentation:upernet"
    )
    assert rows["builtin"] == [builtins, "anymae", ANYMAE_VERSION, "loaded"]


def test_plugins_command_verbose_shows_the_hooks_each_plugin_implements(capsys):
    assert main(["plugins", "--verbose"]) == 0
    lines = capsys.readouterr().out.splitlines()
    image = next(i for i, line in enumerate(lines) if line.startswith("image "))
    builtin = next(i for i, line in enumerate(lines) if line.startswith("builtin "))
    assert lines[image + 1].strip() == (
        "hooks: anymae_register_checkpoint_formats, anymae_register_commands, anymae_register_modalities"
    )
    expected = (
        "hooks: anymae_register_decoders, anymae_register_masking, anymae_register_segmentation_heads, "
        "anymae_register_targets"
    )
    assert lines[builtin + 1].strip() == expected


def test_plugins_command_runs_as_a_module_in_a_fresh_process():
    proc = subprocess.run(
        [sys.executable, "-m", "anymae.core.cli", "plugins"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    rows = plugin_rows(proc.stdout)
    assert rows["image"] == [IMAGE_REGISTERS, "anymae", ANYMAE_VERSION, "loaded"]
    builtins = (
        "masking:random, target:pixels, target:norm_pix, decoder:global, segmentation:linear, segmentation:upernet"
    )
    assert rows["builtin"] == [builtins, "anymae", ANYMAE_VERSION, "loaded"]


# --- a third-party plugin installed as a distribution ----------------------------------------------------
def test_third_party_distribution_is_discovered_through_its_entry_point(toyseq_dist):
    registry = get_registry()
    info = registry.plugins["toyseq"]
    assert (info.distribution, info.version, info.status) == ("toyseq-plugin", "0.1", "loaded")
    assert info.registers == ["modality:toyseq", "masking:every_other"]
    assert info.hooks == ["anymae_register_masking", "anymae_register_modalities"]
    assert registry.modality("toyseq").name == "toyseq"
    assert callable(registry.masking_strategy("every_other"))
    assert "image" in registry.modalities  # the built-ins are unaffected


def test_plugins_command_shows_third_party_distribution_and_version(toyseq_dist, capsys):
    assert main(["plugins", "-v"]) == 0
    out = capsys.readouterr().out
    assert plugin_rows(out)["toyseq"] == ["modality:toyseq, masking:every_other", "toyseq-plugin", "0.1", "loaded"]
    assert "hooks: anymae_register_masking, anymae_register_modalities" in out


def test_third_party_modality_builds_a_model_with_its_grid_and_masking(toyseq_dist):
    registry = get_registry()
    cfg = resolve_config(toyseq_config(toyseq_dist), registry)
    model = build_model(cfg.model, registry=registry)
    assert model.tokenizer.grid == (8,)
    assert model.tokenizer.patch_dim == 8
    x = torch.randn(3, 2, 32)  # (N, C, T)
    assert torch.equal(model.tokenizer.unpatchify(model.tokenizer.patchify(x)), x)
    loss, pred, mask = model(x)
    assert pred.shape == (3, 8, 8)
    assert mask.tolist() == [[0.0, 1.0] * 4] * 3  # every_other removes the odd tokens
    assert math.isfinite(loss.item())


def test_third_party_modality_pretrains_and_reloads_with_the_same_loss(toyseq_dist):
    registry = get_registry()
    cfg = resolve_config(toyseq_config(toyseq_dist / "runs"), registry)
    result = pretrain(cfg, registry=registry, progress=False)

    assert result.checkpoint.is_file()
    assert result.checkpoint.name == "checkpoint-0002.pt"
    assert math.isfinite(result.train_loss)
    assert result.figure is not None and result.figure.is_file()
    assert (result.run_dir / "config.yaml").is_file()

    model = load_model(result.checkpoint, registry=registry).eval()
    assert type(model.tokenizer).__module__ == "toyseq_plugin"
    assert model.masking is registry.masking_strategy("every_other")
    # The held-out loss pretrain reported used the first held-out batch and the model's own masking
    # strategy (here every_other) drawn with a generator seeded by train.seed.
    heldout = registry.modality("toyseq").build_dataset(cfg.data, cfg.model.tokenizer, split="heldout")
    x = heldout.tensors[0][: cfg.train.batch_size]
    mask = torch.zeros(x.shape[0], model.tokenizer.num_tokens, dtype=torch.bool)
    mask[:, 1::2] = True
    with torch.no_grad():
        loss, pred, _ = model(x, mask=mask)
    assert loss.item() == pytest.approx(result.heldout_loss, rel=1e-5)

    # The figure shows what the core handed the plugin's renderer: the first figure_samples held-out series
    # (channel 0) over the final model's predictions for them, scaled together to 0..255 and truncated to uint8
    # (tests/plugin_fixtures.py).
    k = cfg.train.figure_samples
    rows = torch.cat([x[:k, 0], model.tokenizer.unpatchify(pred[:k])[:, 0]]).double()  # (2k, T)
    expected = (rows - rows.min()) / (rows.max() - rows.min() + 1e-6) * 255
    figure = torch.from_numpy(np.array(Image.open(result.figure))).double()
    assert figure.shape == (2 * k, cfg.model.tokenizer.length)
    assert (figure - expected.floor()).abs().max().item() <= 1  # float32 vs float64 at a truncation edge

    # A second model built from the config with the checkpoint's weights agrees exactly.
    rebuilt = build_model(cfg.model, registry=registry).eval()
    rebuilt.load_state_dict(read_checkpoint(result.checkpoint)["model"])
    with torch.no_grad():
        assert torch.equal(rebuilt(x, mask=mask)[0], loss)


def test_third_party_plugin_is_discovered_by_the_cli_in_a_fresh_process(toyseq_dist):
    proc = subprocess.run(
        [sys.executable, "-m", "anymae.core.cli", "plugins"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(toyseq_dist), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stderr
    assert plugin_rows(proc.stdout)["toyseq"][1:] == ["toyseq-plugin", "0.1", "loaded"]


# --- plugins that fail -----------------------------------------------------------------------------------
def test_plugin_that_fails_to_import_warns_with_entry_point_distribution_and_error(broken_dist):
    with pytest.warns(RuntimeWarning) as caught:
        registry = load_registry()
    messages = [str(w.message) for w in caught if "broken" in str(w.message)]
    assert len(messages) == 1
    assert "'broken'" in messages[0]
    assert "broken-plugin 0.3" in messages[0]
    assert "ImportError: broken_plugin needs libfoo" in messages[0]
    assert registry.plugins["broken"].status == "broken"
    assert registry.modality("image").name == "image"
    assert registry.masking_strategy("random") is random_masking


def test_plugins_command_shows_a_broken_plugin_with_its_error(broken_dist, capsys):
    with pytest.warns(RuntimeWarning, match="broken"):
        assert main(["plugins"]) == 0
    rows = plugin_rows(capsys.readouterr().out)
    registers, distribution, version, status = rows["broken"]
    assert (registers, distribution, version) == ("-", "broken-plugin", "0.3")
    assert status.startswith("broken: failed to load: ImportError: broken_plugin needs libfoo")
    assert rows["image"][-1] == "loaded"


def test_strict_env_switch_makes_a_broken_plugin_fatal(broken_dist, monkeypatch):
    monkeypatch.setenv("ANYMAE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"'broken'.*broken-plugin 0\.3.*ImportError"):
        load_registry()


def test_strict_argument_makes_a_broken_plugin_fatal(broken_dist):
    with pytest.raises(PluginError, match="broken_plugin needs libfoo"):
        load_registry(strict=True)


def test_plugin_raising_in_its_registration_hook_is_broken_and_others_register():
    @hookimpl
    def anymae_register_masking(register):
        register("half_done", random_masking)  # discarded: the plugin fails before returning
        raise ValueError("boom while registering")

    exploding = SimpleNamespace(anymae_register_masking=anymae_register_masking)
    with pytest.warns(RuntimeWarning, match=r"'exploding'.*raised while registering: ValueError: boom"):
        registry = load_registry(plugins=[("exploding", exploding)])
    assert registry.plugins["exploding"].status == "broken"
    assert "half_done" not in registry.masking
    assert registry.modality("image").name == "image"
    assert registry.masking_strategy("random") is random_masking


def test_registering_something_that_is_not_a_modality_marks_the_plugin_broken():
    @hookimpl
    def anymae_register_modalities(register):
        register("not a modality")

    confused = SimpleNamespace(anymae_register_modalities=anymae_register_modalities)
    with pytest.warns(RuntimeWarning, match="takes one anymae.core.Modality instance"):
        registry = load_registry(entry_points=False, plugins=[("confused", confused)])
    assert registry.plugins["confused"].status == "broken"
    assert registry.modalities == {}


def test_misspelled_hook_is_reported_naming_it_and_suggesting_the_right_one():
    @hookimpl
    def anymae_register_modality(register):
        register(stub_modality("typo"))

    typo = SimpleNamespace(anymae_register_modality=anymae_register_modality)
    with pytest.warns(RuntimeWarning) as caught:
        registry = load_registry(plugins=[("typo", typo)])
    (message,) = [str(w.message) for w in caught]
    assert "'typo'" in message
    assert "unknown hook 'anymae_register_modality'" in message
    assert "did you mean 'anymae_register_modalities'?" in message
    assert registry.plugins["typo"].status == "broken"
    assert "typo" not in registry.modalities
    assert "image" in registry.modalities


def test_misspelled_hook_is_fatal_when_strict():
    @hookimpl
    def anymae_register_maskng(register):
        register("x", random_masking)

    with pytest.raises(PluginError, match="did you mean 'anymae_register_masking'"):
        load_registry(
            entry_points=False,
            plugins=[("typo", SimpleNamespace(anymae_register_maskng=anymae_register_maskng))],
            strict=True,
        )


def test_two_plugins_registering_the_same_modality_name_raise_naming_both():
    with pytest.raises(DuplicateNameError) as raised:
        load_registry(plugins=[("copycat", modality_plugin(stub_modality("image")))])
    message = str(raised.value)
    assert "modality 'image'" in message
    assert "plugin 'image'" in message
    assert "plugin 'copycat'" in message


def test_two_plugins_registering_the_same_masking_name_raise_naming_both():
    with pytest.raises(DuplicateNameError, match=r"masking strategy 'random'.*'first'.*'second'"):
        load_registry(
            entry_points=False,
            plugins=[
                ("first", masking_plugin(random=random_masking)),
                ("second", masking_plugin(random=random_masking)),
            ],
        )


def test_duplicate_names_are_fatal_even_when_not_strict():
    with pytest.raises(DuplicateNameError):
        load_registry(
            entry_points=False,
            plugins=[("a", modality_plugin(stub_modality("seq"))), ("b", modality_plugin(stub_modality("seq")))],
            strict=False,
        )


# --- disabling plugins and unknown names -----------------------------------------------------------------
def test_disable_env_switch_blocks_image_and_the_cli_shows_it_disabled(monkeypatch, capsys):
    monkeypatch.setenv("ANYMAE_DISABLE_PLUGINS", "image")
    registry = get_registry()
    assert "image" not in registry.modalities
    assert registry.plugins["image"].status == "disabled"
    assert registry.masking_strategy("random") is random_masking
    assert main(["plugins"]) == 0
    assert plugin_rows(capsys.readouterr().out)["image"] == ["-", "anymae", ANYMAE_VERSION, "disabled"]


def test_config_using_a_disabled_modality_fails_listing_the_registered_ones(monkeypatch):
    monkeypatch.setenv("ANYMAE_DISABLE_PLUGINS", " image , something-else ")
    registry = load_registry(plugins=[("seq", modality_plugin(stub_modality("seq")))])
    with pytest.raises(ConfigError, match=r"unknown modality 'image'; registered: ([a-z]+, )*seq\b"):
        resolve_config({"model": {"modality": "image"}}, registry)


def test_unknown_modality_lists_registered_and_suggests_the_closest():
    import anymae.modalities.image

    plugins = [("image", anymae.modalities.image), ("toyaudio", modality_plugin(stub_modality("toyaudio")))]
    registry = load_registry(entry_points=False, plugins=plugins)
    with pytest.raises(
        KeyError, match=r"unknown modality 'imag'; registered: image, toyaudio \(did you mean 'image'\?\)"
    ):
        registry.modality("imag")
    with pytest.raises(
        ConfigError, match=r"unknown modality 'toyadio'; registered: image, toyaudio \(did you mean 'toyaudio'\?\)"
    ):
        resolve_config({"model": {"modality": "toyadio"}}, registry)


def test_unknown_masking_lists_registered_and_suggests_the_closest():
    import anymae.modalities.image

    plugins = [("builtin", anymae.plugins.builtin), ("image", anymae.modalities.image)]
    registry = load_registry(entry_points=False, plugins=[*plugins, ("tubes", masking_plugin(toytube=random_masking))])
    with pytest.raises(
        KeyError, match=r"unknown masking strategy 'randon'; registered: random, toytube \(did you mean 'random'\?\)"
    ):
        registry.masking_strategy("randon")
    with pytest.raises(ConfigError, match=r"unknown masking strategy 'toytubes'.*did you mean 'toytube'"):
        resolve_config({"model": {"modality": "image", "masking": "toytubes"}}, registry)


def test_unknown_name_without_a_close_match_gets_no_suggestion():
    registry = load_registry(entry_points=False, plugins=[("builtin", anymae.plugins.builtin)])
    with pytest.raises(KeyError) as raised:
        registry.masking_strategy("zzz")
    assert raised.value.args[0] == "unknown masking strategy 'zzz'; registered: random"
    with pytest.raises(KeyError, match="registered: none"):
        registry.modality("image")


def test_trace_env_switch_prints_registration_hook_calls_to_stderr(monkeypatch, capsys):
    monkeypatch.setenv("ANYMAE_TRACE_PLUGINS", "1")
    load_registry()
    err = capsys.readouterr().err
    assert "anymae_register_modalities" in err
    assert "anymae_register_masking" in err
