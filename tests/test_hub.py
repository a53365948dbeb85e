"""Hub names (``hf-hub:ORG/NAME[@REVISION]``) resolved offline from a hub cache written in the test."""

import json

import pytest
from hub_cache import write_hub_model

from anymae.core.io.checkpoint import CheckpointError
from anymae.core.io.hub import parse_hub_name, resolve_hub, resolve_source
from anymae.core.weights.catalog import RELEASED


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_hub_name_splits_into_repository_and_revision():
    assert parse_hub_name("hf-hub:facebook/vit-mae-base") == ("facebook/vit-mae-base", None)
    assert parse_hub_name("hf-hub:facebook/vit-mae-base@v1.0") == ("facebook/vit-mae-base", "v1.0")
    for bad in ("hf-hub:vit-mae-base", "hf-hub:a/b/c", "hf-hub:/x"):
        with pytest.raises(CheckpointError, match="hf-hub:ORG/NAME"):
            parse_hub_name(bad)


def test_a_transformers_model_resolves_to_its_snapshot_folder(offline_cache):
    config = json.dumps({"model_type": "vit_mae"}).encode()
    snapshot = write_hub_model(
        offline_cache, "facebook/vit-mae-base", {"config.json": config, "model.safetensors": b"x"}
    )
    assert resolve_hub("hf-hub:facebook/vit-mae-base") == snapshot


def test_a_timm_model_resolves_to_its_weights_file_and_a_revision_to_its_own_snapshot(offline_cache):
    timm_config = json.dumps({"architecture": "vit_base_patch16_224"}).encode()
    main = write_hub_model(
        offline_cache, "timm/vit_base_patch16_224.mae", {"config.json": timm_config, "model.safetensors": b"m"}
    )
    tagged = write_hub_model(
        offline_cache, "timm/vit_base_patch16_224.mae", {"config.json": timm_config, "model.safetensors": b"t"},
        revision="v2",
    )  # fmt: skip
    assert resolve_source("hf-hub:timm/vit_base_patch16_224.mae") == main / "model.safetensors"
    assert resolve_source("hf-hub:timm/vit_base_patch16_224.mae@v2") == tagged / "model.safetensors"


def test_a_model_missing_from_the_cache_offline_is_one_line_naming_it_and_what_to_do(offline_cache):
    with pytest.raises(CheckpointError) as caught:
        resolve_hub("hf-hub:facebook/vit-mae-large")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("hf-hub:facebook/vit-mae-large: not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE=1" in message and "hf download facebook/vit-mae-large" in message


def test_a_path_stays_a_path():
    assert str(resolve_source("runs/demo/checkpoint-0001.pt")) == "runs/demo/checkpoint-0001.pt"


def test_the_released_list_names_each_model_once_with_a_known_modality():
    names = [r.name for r in RELEASED]
    assert len(names) == len(set(names))
    assert {r.modality for r in RELEASED} <= {"image", "video", "audio"}
    assert all(r.name.count("/") == 1 and r.hub_name == f"hf-hub:{r.name}" for r in RELEASED)
