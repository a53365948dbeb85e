"""hf-hub: names in every command that takes a checkpoint, from a hub cache written in the test (no network):
each released layout ``anymae models`` lists is read from a tiny model of the same keys, and a name that is not in
the cache fails with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from conftest import make_image, write_image
from hub_cache import write_hub_model
from official_layout import official_pos_embed
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from anymae.core import load_model
from anymae.core.cli import main
from anymae.core.config import resolve_model_config
from anymae.core.weights.catalog import RELEASED, Released
from anymae.core.weights.init_from import init_model_from


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _folder_files(model: transformers.PreTrainedModel, folder: Path) -> dict[str, Path]:
    model.save_pretrained(folder)
    return {f.name: f for f in folder.iterdir() if f.is_file()}


def _vitmae(folder: Path) -> dict[str, Path]:
    """A tiny ``ViTMAEForPreTraining`` with the keys of facebook/vit-mae-*: encoder, decoder, sin-cos tables."""
    config = transformers.ViTMAEConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32,
        patch_size=8, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
        decoder_intermediate_size=128,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.ViTMAEForPreTraining(config).eval()
    with torch.no_grad():  # released ViTMAE folders hold the official sin-cos tables
        hf.vit.embeddings.position_embeddings.copy_(official_pos_embed(4, 64))
        hf.decoder.decoder_pos_embed.copy_(official_pos_embed(4, 32))
    return _folder_files(hf, folder)


def _timm_vit(folder: Path) -> dict[str, Path]:
    """A tiny timm ViT as timm's hub repositories hold it: ``model.safetensors`` + timm's ``config.json``."""
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0)
    with torch.no_grad():
        vit.pos_embed.copy_(official_pos_embed(4, 64))
    folder.mkdir(parents=True)
    save_file(vit.state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": 0}))
    return {"model.safetensors": folder / "model.safetensors", "config.json": folder / "config.json"}


def _videomae(folder: Path) -> dict[str, Path]:
    """A tiny ``VideoMAEForPreTraining`` with the keys of MCG-NJU/videomae-*."""
    config = transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_channels=3, num_frames=4, tubelet_size=2, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, decoder_num_attention_heads=2,
        decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_intermediate_size=32, use_mean_pooling=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return _folder_files(transformers.VideoMAEForPreTraining(config).eval(), folder)


LAYOUTS = {"transformers ViTMAE": _vitmae, "timm ViT": _timm_vit, "transformers VideoMAE": _videomae}


@pytest.mark.parametrize("released", RELEASED, ids=[r.name for r in RELEASED])
def test_every_released_name_loads_from_a_tiny_model_of_its_layout(released: Released, hub, tmp_path):
    write_hub_model(hub, released.name, LAYOUTS[released.layout](tmp_path / "files"))
    model = load_model(released.hub_name, num_heads=4 if released.layout == "timm ViT" else None)
    assert model.config["model"]["modality"] == released.modality
    assert (model.decoder is not None) == (released.contents == "encoder + decoder")


@pytest.fixture
def vit_mae_base(hub, tmp_path) -> str:
    write_hub_model(hub, "facebook/vit-mae-base", _vitmae(tmp_path / "vitmae"))
    return "hf-hub:facebook/vit-mae-base"


def _photos(root: Path, n: int = 2) -> list[Path]:
    return [write_image(root / f"img{i}.png", make_image(i, size=(32, 32))) for i in range(n)]


def test_hub_names_work_in_visualize_embed_and_convert(vit_mae_base, tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    assert main(["visualize", vit_mae_base, *map(str, photos), "-o", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").is_file()
    out = tmp_path / "features.safetensors"
    assert main(["embed", vit_mae_base, *map(str, photos), "-o", str(out), "--no-progress"]) == 0
    assert out.is_file()
    assert main(["convert", vit_mae_base, str(tmp_path / "mae.pt")]) == 0
    reference = load_model(vit_mae_base).eval()
    converted = load_model(tmp_path / "mae.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted.encode(x), reference.encode(x))


def test_a_hub_name_works_in_knn(vit_mae_base, tmp_path, capsys):
    root = tmp_path / "classes"
    for split in ("train", "val"):
        for c, name in enumerate(("a", "b")):
            for i in range(3):
                write_image(root / split / name / f"{i}.png", make_image(10 * c + i, size=(32, 32)))
    args = ["knn", vit_mae_base, f"data.root={root}", "data.heldout_split=val", "--k", "2", "--no-progress"]
    assert main(args) == 0
    assert "top-1" in capsys.readouterr().out


def test_model_init_from_takes_a_hub_name(vit_mae_base):
    source = load_model(vit_mae_base)
    cfg = resolve_model_config({**source.config["model"], "init_from": vit_mae_base})
    from anymae.core.build.models import build_model

    torch.manual_seed(1)
    fresh = build_model(cfg)
    init_model_from(fresh, cfg, log=False)
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), source.state_dict().values(), strict=True)
    )


def test_a_name_missing_from_the_cache_is_one_line_in_every_command(hub, tmp_path, capsys):
    photos = _photos(tmp_path / "photos", 1)
    for command in (
        ["visualize", "hf-hub:facebook/vit-mae-large", str(photos[0]), "-o", str(tmp_path / "f.png")],
        ["embed", "hf-hub:facebook/vit-mae-large", str(photos[0]), "-o", str(tmp_path / "f.safetensors")],
        ["convert", "hf-hub:facebook/vit-mae-large", str(tmp_path / "x.pt")],
    ):
        assert main(command) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        assert err.startswith(f"anymae {command[0]}: error: hf-hub:facebook/vit-mae-large: not in the Hugging Face")
