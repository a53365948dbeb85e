"""Official MAE checkpoint files (reference section 5): layout, inference of the architecture, safety.

Official-layout state dicts are written here by renaming a built model's keys to the official names and
adding the stored sin-cos tables, computed independently in numpy.
"""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from official_layout import to_official

from anymae.core import CheckpointError, load_model
from anymae.core.build.models import build_model
from anymae.core.config import resolve_model_config
from anymae.modalities.image.interop import from_official_mae
from anymae.plugins import load_registry

# The official decoder always has 16 heads (reference section 1), which load_model assumes.
SMALL = {
    "tokenizer": {"img_size": 32, "patch_size": 8},
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 16,
    "norm_pix_loss": True,
}


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def original(registry):
    torch.manual_seed(0)
    model = build_model(resolve_model_config(SMALL, registry), registry=registry).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def _inputs():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32), torch.rand(2, 16)


def _load(path, registry, **kwargs):
    return load_model(path, registry=registry, num_heads=4, **kwargs).eval()


def test_official_state_dict_has_the_reference_key_set(original):
    state = to_official(original)
    assert state["cls_token"].shape == (1, 1, 64)
    assert state["pos_embed"].shape == (1, 17, 64)
    assert state["patch_embed.proj.weight"].shape == (64, 3, 8, 8)
    assert state["blocks.1.attn.qkv.weight"].shape == (3 * 64, 64)
    assert state["mask_token"].shape == (1, 1, 32)
    assert state["decoder_pos_embed"].shape == (1, 17, 32)
    assert state["decoder_pred.weight"].shape == (8 * 8 * 3, 32)
    assert {
        "norm.weight",
        "decoder_norm.bias",
        "decoder_embed.weight",
        "decoder_blocks.0.mlp.fc2.bias",
    } <= set(state)


def test_official_checkpoint_loads_with_identical_outputs(original, registry, tmp_path):
    path = tmp_path / "mae_pretrain_vit_x.pth"
    torch.save({"model": to_official(original)}, path)
    model = _load(path, registry)
    assert model.config["model"]["target"] == "norm_pix"  # released pretrain files are norm-pix models
    imgs, noise = _inputs()
    with torch.no_grad():
        expected = original(imgs, noise=noise)
        got = model(imgs, noise=noise)
    assert torch.equal(got[2], expected[2])
    assert (got[1] - expected[1]).abs().max().item() <= 1e-6
    assert abs(got[0].item() - expected[0].item()) <= 1e-6


def test_official_visualize_checkpoint_is_a_raw_pixel_model(original, registry, tmp_path):
    path = tmp_path / "mae_visualize_vit_x.pth"
    torch.save({"model": to_official(original)}, path)
    assert _load(path, registry).config["model"]["target"] == "pixels"


def test_official_encoder_only_checkpoint_gives_encoder_only_model(original, registry, tmp_path):
    path = tmp_path / "mae_pretrain_vit_x.pth"
    torch.save({"model": to_official(original, with_decoder=False)}, path)
    model = _load(path, registry)
    assert model.decoder is None
    imgs, _ = _inputs()
    with pytest.raises(RuntimeError, match="no decoder"):
        model(imgs)
    with torch.no_grad():
        features = model.encode(imgs)
        expected = original.encode(imgs)
    assert features.shape == (2, 1 + 16, 64)
    assert (features - expected).abs().max().item() <= 1e-6


def test_official_checkpoint_with_extra_key_raises_listing_it(original, registry, tmp_path):
    state = to_official(original)
    state["head.weight"] = torch.zeros(10, 64)
    path = tmp_path / "mae_pretrain_vit_x.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"head\.weight"):
        _load(path, registry)


def test_official_checkpoint_with_extra_key_loads_with_strict_false_and_warns(original, registry, tmp_path):
    state = to_official(original)
    state["head.weight"] = torch.zeros(10, 64)
    path = tmp_path / "mae_pretrain_vit_x.pth"
    torch.save({"model": state}, path)
    with pytest.warns(UserWarning, match=r"head\.weight"):
        model = _load(path, registry, strict=False)
    imgs, noise = _inputs()
    with torch.no_grad():
        assert torch.equal(model(imgs, noise=noise)[1], original(imgs, noise=noise)[1])


def test_official_checkpoint_with_missing_key_raises_listing_it(original, registry, tmp_path):
    state = to_official(original)
    del state["blocks.1.mlp.fc1.bias"]
    path = tmp_path / "mae_pretrain_vit_x.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"encoder\.blocks\.1\.mlp\.fc1\.bias"):
        _load(path, registry)


def test_official_checkpoint_with_a_learned_pos_table_is_refused(original, registry, tmp_path):
    state = to_official(original)
    state["pos_embed"] = state["pos_embed"] + 0.5
    path = tmp_path / "mae_pretrain_vit_x.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="pos_embed"):
        _load(path, registry)


def test_official_trainer_checkpoint_with_argparse_namespace_loads(original, registry, tmp_path):
    path = tmp_path / "checkpoint-399.pth"
    payload = {
        "model": to_official(original),
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 399,
        "scaler": {"scale": 65536.0},
        "args": argparse.Namespace(model="mae_vit_x", mask_ratio=0.75, norm_pix_loss=True, blr=1.5e-4),
    }
    torch.save(payload, path)
    model = _load(path, registry)
    imgs, noise = _inputs()
    with torch.no_grad():
        assert torch.equal(model(imgs, noise=noise)[1], original(imgs, noise=noise)[1])


class _RunsCode:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_checkpoint_that_would_run_code_is_refused(original, registry, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "mae_pretrain_vit_x.pth"
    torch.save({"model": to_official(original), "payload": _RunsCode(f"touch {marker}")}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        _load(path, registry)
    assert not marker.exists()


def test_checkpoint_with_os_system_true_is_refused(registry, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _RunsCode("true")}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_model(path, registry=registry)


def test_file_that_is_not_a_checkpoint_raises_checkpoint_error(registry, tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load_model(path, registry=registry)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pth", registry=registry)


def _official_shapes(*, patch: int, dim: int, depth: int, grid: int, with_decoder: bool) -> dict[str, torch.Tensor]:
    """A shape-only official state dict (meta tensors: no memory) with the released key set."""

    def t(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device="meta")

    state = {
        "cls_token": t(1, 1, dim),
        "pos_embed": t(1, grid * grid + 1, dim),
        "patch_embed.proj.weight": t(dim, 3, patch, patch),
        "patch_embed.proj.bias": t(dim),
        "norm.weight": t(dim),
        "norm.bias": t(dim),
    }

    def block(prefix: str, width: int) -> None:
        for name, shape in {
            "norm1.weight": (width,),
            "norm1.bias": (width,),
            "attn.qkv.weight": (3 * width, width),
            "attn.qkv.bias": (3 * width,),
            "attn.proj.weight": (width, width),
            "attn.proj.bias": (width,),
            "norm2.weight": (width,),
            "norm2.bias": (width,),
            "mlp.fc1.weight": (4 * width, width),
            "mlp.fc1.bias": (4 * width,),
            "mlp.fc2.weight": (width, 4 * width),
            "mlp.fc2.bias": (width,),
        }.items():
            state[f"{prefix}.{name}"] = t(*shape)

    for i in range(depth):
        block(f"blocks.{i}", dim)
    if with_decoder:
        state.update(
            mask_token=t(1, 1, 512),
            decoder_pos_embed=t(1, grid * grid + 1, 512),
            **{"decoder_embed.weight": t(512, dim), "decoder_embed.bias": t(512)},
            **{"decoder_norm.weight": t(512), "decoder_norm.bias": t(512)},
            **{"decoder_pred.weight": t(patch * patch * 3, 512), "decoder_pred.bias": t(patch * patch * 3)},
        )
        for j in range(8):
            block(f"decoder_blocks.{j}", 512)
    return state


@pytest.mark.parametrize(
    ("patch", "dim", "depth", "heads", "grid"),
    [(16, 768, 12, 12, 14), (16, 1024, 24, 16, 14), (14, 1280, 32, 16, 16)],
    ids=["vit_base_patch16", "vit_large_patch16", "vit_huge_patch14"],
)
@pytest.mark.parametrize("with_decoder", [False, True], ids=["encoder_only", "full"])
def test_official_architecture_is_inferred_from_tensor_shapes(registry, patch, dim, depth, heads, grid, with_decoder):
    state = _official_shapes(patch=patch, dim=dim, depth=depth, grid=grid, with_decoder=with_decoder)
    model_raw, converted, tables = from_official_mae(state)
    assert model_raw["embed_dim"] == dim
    assert model_raw["depth"] == depth
    assert model_raw["num_heads"] == heads
    assert model_raw["mlp_ratio"] == 4.0
    assert model_raw["tokenizer"] == {"img_size": 224, "patch_size": patch, "in_chans": 3}
    assert model_raw["norm_eps"] == 1e-6
    cfg = resolve_model_config(model_raw, registry)
    assert cfg.tokenizer.size == (224, 224)
    assert set(tables) == ({"encoder.pos_embed", "decoder.pos_embed"} if with_decoder else {"encoder.pos_embed"})
    assert "encoder.blocks.0.attn.qkv.weight" in converted
    if with_decoder:
        assert (cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads) == (512, 8, 16)
        assert cfg.decoder_mlp_ratio == 4.0
        assert "decoder.blocks.7.mlp.fc2.bias" in converted


def test_vit_base_build_has_the_official_encoder_size(registry):
    # Defaults of ModelConfig are mae_vit_base_patch16; encoder (patch embed + blocks + norm + cls) ~86M.
    cfg = resolve_model_config({"tokenizer": {"img_size": 224, "patch_size": 16}, "decoder_depth": 1}, registry)
    model = build_model(cfg, registry=registry, with_decoder=False)
    assert len(model.encoder.blocks) == 12
    assert model.encoder.blocks[0].attn.num_heads == 12
    assert model.encoder.pos_embed.shape == (1, 197, 768)
    params = sum(p.numel() for p in model.parameters())
    assert 85_000_000 < params < 87_000_000
    assert {k for k in model.state_dict() if not k.startswith(("encoder.blocks.", "tokenizer.proj."))} == {
        "encoder.cls_token",
        "encoder.norm.weight",
        "encoder.norm.bias",
    }
