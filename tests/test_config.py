"""Configs are data: typed validation, one-line messages naming the key, ``key.sub=value`` overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from anymae.core import ConfigError
from anymae.core.config import (
    bundled_configs,
    config_to_dict,
    load_config,
    read_config_source,
    resolve_config,
)


def _with(raw: dict[str, Any], section: str, key: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    node = raw
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[key] = value
    return raw


def _single_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    return message


def test_tiny_config_resolves(tiny_config_dict):
    cfg = resolve_config(tiny_config_dict)
    assert cfg.train.batch_size == 4
    assert cfg.model.tokenizer.size == (32, 32)
    assert cfg.data.root == tiny_config_dict["data"]["root"]


def test_unknown_key_names_the_key_and_suggests_the_closest(tiny_config_dict):
    raw = _with(tiny_config_dict, "train", "batch_sise", 8)
    with pytest.raises(ConfigError) as exc:
        resolve_config(raw)
    message = _single_line(exc)
    assert "train.batch_sise" in message
    assert "did you mean 'batch_size'" in message


def test_unknown_key_in_modality_section_names_the_key(tiny_config_dict):
    raw = _with(tiny_config_dict, "model.tokenizer", "patch_sise", 8)
    with pytest.raises(ConfigError) as exc:
        resolve_config(raw)
    message = _single_line(exc)
    assert "model.tokenizer.patch_sise" in message
    assert "patch_size" in message


def test_wrong_type_names_the_key(tiny_config_dict):
    raw = _with(tiny_config_dict, "train", "epochs", "ten")
    with pytest.raises(ConfigError) as exc:
        resolve_config(raw)
    message = _single_line(exc)
    assert "train.epochs" in message
    assert "ten" in message


def test_bool_is_not_accepted_as_int(tiny_config_dict):
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        resolve_config(_with(tiny_config_dict, "train", "epochs", True))


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_mask_ratio_outside_zero_one_is_rejected(tiny_config_dict, ratio):
    with pytest.raises(ConfigError) as exc:
        resolve_config(_with(tiny_config_dict, "model", "mask_ratio", ratio))
    message = _single_line(exc)
    assert "mask_ratio" in message
    assert str(ratio) in message


def test_image_size_not_divisible_by_patch_names_both(tiny_config_dict):
    raw = _with(tiny_config_dict, "model.tokenizer", "img_size", 30)
    with pytest.raises(ConfigError) as exc:
        resolve_config(raw)
    message = _single_line(exc)
    assert "30" in message and "8" in message
    assert "img_size" in message and "patch_size" in message


def test_zero_batch_size_is_rejected(tiny_config_dict):
    with pytest.raises(ConfigError) as exc:
        resolve_config(_with(tiny_config_dict, "train", "batch_size", 0))
    assert "batch_size" in _single_line(exc)


def test_overrides_are_parsed_as_yaml(tiny_config_file):
    cfg = load_config(
        tiny_config_file,
        [
            "train.epochs=3",
            "model.tokenizer.img_size=[32, 64]",
            "data.heldout_split=null",
            "optim.min_lr=0.5e-6",
            "train.precision=bf16",
            "model.norm_pix_loss=true",
        ],
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.model.tokenizer.size == (32, 64)
    assert cfg.data.heldout_split is None
    assert cfg.optim.min_lr == pytest.approx(5e-7)
    assert cfg.train.precision == "bf16"
    assert cfg.model.norm_pix_loss is True


def test_override_with_exponent_float_without_dot_is_a_number(tiny_config_file):
    # PyYAML (YAML 1.1) reads "1e-3" as a string; users type it on the command line all the time.
    cfg = load_config(tiny_config_file, ["optim.lr=1e-3", "optim.blr=1.5e-4"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.optim.blr == pytest.approx(1.5e-4)


def test_override_creates_missing_sections_and_still_validates(tiny_config_file):
    with pytest.raises(ConfigError, match=r"train\.batch_sise"):
        load_config(tiny_config_file, ["train.batch_sise=2"])


def test_override_without_equals_sign_is_rejected(tiny_config_file):
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        load_config(tiny_config_file, ["train.epochs"])


def test_unknown_bundled_config_suggests_the_closest():
    with pytest.raises(ConfigError) as exc:
        read_config_source("demo_imag")
    message = _single_line(exc)
    assert "did you mean 'demo_image'" in message


def test_bundled_configs_include_demo_image_with_a_summary():
    configs = bundled_configs()
    assert "demo_image" in configs
    assert configs["demo_image"]  # the first comment line is the summary


@pytest.mark.parametrize("name", sorted(bundled_configs()))
def test_every_bundled_config_validates(name):
    cfg = load_config(name)
    assert cfg.name == name


def test_config_to_dict_round_trips_through_yaml(tiny_config_dict):
    cfg = resolve_config(tiny_config_dict)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    again = resolve_config(yaml.safe_load(text))
    assert again == cfg


def test_bundled_config_round_trips_through_yaml():
    cfg = load_config("demo_image")
    again = resolve_config(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))))
    assert again == cfg


def test_pretraining_preset_applies_before_overrides_and_a_run_s_config_reloads_as_written(tmp_path: Path):
    """``preset=crops`` of demo_image sets the in-domain pre-training of issue 21 (its values, then the command
    line's); the config a run writes names the preset and reloads unchanged; an unknown preset is refused."""
    cfg = load_config("demo_image", ["preset=crops", "train.epochs=3"])
    assert cfg.preset == "crops" and cfg.model.tokenizer.img_size == 32 and cfg.data.heldout_split is None
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.run_name) == (3, 128, "demo_image_crops")
    plain = load_config("demo_image")
    assert plain.preset is None and plain.model.tokenizer.img_size == 64 and plain.train.epochs == 30
    written = tmp_path / "config.yaml"
    written.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    assert load_config(written) == cfg
    with pytest.raises(ConfigError) as exc:
        load_config("demo_image", ["preset=crop"])
    assert "preset 'crop'" in _single_line(exc) and "crops" in _single_line(exc)


def test_config_file_name_becomes_the_default_name(tmp_path: Path, tiny_config_dict):
    raw = copy.deepcopy(tiny_config_dict)
    del raw["name"]
    path = tmp_path / "my_run.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).name == "my_run"
