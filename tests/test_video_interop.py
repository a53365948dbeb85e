"""VideoMAE interop: Hugging Face VideoMAEForPreTraining (random init, tiny config) ported into anymae gives
the same decoder output and loss; original VideoMAE state dicts convert with strict key checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import VideoMAEConfig, VideoMAEForPreTraining

from anymae.core.io.checkpoint import CheckpointError
from anymae.modalities.video.interop import from_hugging_face_videomae, from_videomae, load_videomae


def _hf_model(norm_pix_loss: bool) -> VideoMAEForPreTraining:
    torch.manual_seed(0)
    config = VideoMAEConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        num_frames=4,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        decoder_num_attention_heads=2,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=2,
        decoder_intermediate_size=32,
        use_mean_pooling=False,
        norm_pix_loss=norm_pix_loss,
    )
    model = VideoMAEForPreTraining(config).eval()
    with torch.no_grad():  # random init leaves biases and LayerNorms trivial: make every parameter count
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


HF_BLOCK_NORMS = tuple(
    f"{stack}.{i}.{norm}"
    for stack in ("videomae.encoder.layer", "decoder.decoder_layers")
    for i in range(2)
    for norm in ("layernorm_before", "layernorm_after")
)
OUR_BLOCK_NORMS = tuple(
    f"{stack}.{i}.{norm}"
    for stack in ("encoder.blocks", "decoder.blocks")
    for i in range(2)
    for norm in ("norm1", "norm2")
)


def _norm_eps(model: nn.Module) -> dict[str, float]:
    return {name: m.eps for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)}


def _set_norm_eps_(model: nn.Module, eps: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps


def _predictions(model, hf, *, batch: int = 3):
    """anymae's and HF's outputs on the same clips and tube mask: (loss, removed-patch predictions) each."""
    generator = torch.Generator().manual_seed(1)
    num_frames, size = hf.config.num_frames, hf.config.image_size
    pixel_values = torch.randn(batch, num_frames, 3, size, size, generator=generator)  # HF layout (N, T, C, H, W)
    grid = (num_frames // hf.config.tubelet_size, (size // hf.config.patch_size) ** 2)
    bool_masked_pos = _tube_mask(batch, generator, slices=grid[0], spatial=grid[1])
    with torch.no_grad():
        ours_loss, ours_pred, ours_mask = model(pixel_values.permute(0, 2, 1, 3, 4), mask=bool_masked_pos)
        theirs = hf(pixel_values, bool_masked_pos=bool_masked_pos)
    assert torch.equal(ours_mask.bool(), bool_masked_pos)
    assert (ours_pred[~bool_masked_pos] == 0).all()
    ours_removed = ours_pred[bool_masked_pos].reshape(batch, -1, ours_pred.shape[-1])  # ascending token order
    assert ours_removed.shape == theirs.logits.shape
    return (ours_loss, ours_removed), (theirs.loss, theirs.logits)


def _tube_mask(batch: int, generator: torch.Generator, *, spatial: int = 16, slices: int = 2) -> torch.Tensor:
    """(N, slices * spatial) bool: 3/4 of the spatial positions removed in every time slice, different per
    sample."""
    rows = []
    for _ in range(batch):
        removed = torch.zeros(spatial, dtype=torch.bool)
        removed[torch.randperm(spatial, generator=generator)[: spatial * 3 // 4]] = True
        rows.append(removed.repeat(slices))
    return torch.stack(rows)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_hugging_face_videomae_port_matches_decoder_output_and_loss(norm_pix_loss):
    hf = _hf_model(norm_pix_loss)
    model = load_videomae(hf.state_dict(), config=hf.config.to_dict()).eval()
    assert model.config["model"]["target"] == ("videomae" if norm_pix_loss else "videomae_pixels")
    # Random inputs keep LayerNorm's variance near 1, where no eps is visible at this tolerance: pin each one.
    # HF builds its block norms and the encoder's final norm with config.layer_norm_eps (1e-12) and the
    # decoder's final norm as a bare nn.LayerNorm (torch's default eps, 1e-5).
    assert _norm_eps(hf) == {**dict.fromkeys((*HF_BLOCK_NORMS, "videomae.layernorm"), 1e-12), "decoder.norm": 1e-5}
    assert _norm_eps(model) == {**dict.fromkeys((*OUR_BLOCK_NORMS, "encoder.norm"), 1e-12), "decoder.norm": 1e-5}
    (ours_loss, ours_removed), (theirs_loss, theirs_removed) = _predictions(model, hf)
    assert (ours_removed - theirs_removed).abs().max().item() <= 1e-5
    assert abs(ours_loss.item() - theirs_loss.item()) <= 1e-5


def test_hugging_face_folder_round_trip(tmp_path):
    hf = _hf_model(True)
    hf.save_pretrained(tmp_path / "hf")
    model = load_videomae(tmp_path / "hf")
    ours = {k: v for k, v in model.state_dict().items()}
    _, converted = from_hugging_face_videomae(hf.config.to_dict(), hf.state_dict())
    assert set(ours) == set(converted)
    assert all(torch.equal(ours[k], converted[k]) for k in ours)


def _videomae_names(depth: int, decoder_depth: int) -> list[tuple[str, str]]:
    """(original VideoMAE name, HF name) of every tensor both layouts store alike, written by hand from
    VideoMAE's modeling_pretrain.py and HF's modeling_videomae.py; the attention's q/k/v come after."""
    names = [
        ("encoder.patch_embed.proj.weight", "videomae.embeddings.patch_embeddings.projection.weight"),
        ("encoder.patch_embed.proj.bias", "videomae.embeddings.patch_embeddings.projection.bias"),
        ("encoder.norm.weight", "videomae.layernorm.weight"),
        ("encoder.norm.bias", "videomae.layernorm.bias"),
        ("encoder_to_decoder.weight", "encoder_to_decoder.weight"),
        ("mask_token", "mask_token"),
        ("decoder.norm.weight", "decoder.norm.weight"),
        ("decoder.norm.bias", "decoder.norm.bias"),
        ("decoder.head.weight", "decoder.head.weight"),
        ("decoder.head.bias", "decoder.head.bias"),
    ]
    for ours, theirs, blocks in (
        ("encoder.blocks", "videomae.encoder.layer", depth),
        ("decoder.blocks", "decoder.decoder_layers", decoder_depth),
    ):
        for i in range(blocks):
            a, b = f"{ours}.{i}.", f"{theirs}.{i}."
            names += [(a + "attn.q_bias", b + "attention.attention.query.bias")]
            names += [(a + "attn.v_bias", b + "attention.attention.value.bias")]
            for mine, hf_name in (
                ("attn.proj", "attention.output.dense"),
                ("norm1", "layernorm_before"),
                ("norm2", "layernorm_after"),
                ("mlp.fc1", "intermediate.dense"),
                ("mlp.fc2", "output.dense"),
            ):
                names += [(f"{a}{mine}.{kind}", f"{b}{hf_name}.{kind}") for kind in ("weight", "bias")]
    return names


def _qkv_names(depth: int, decoder_depth: int) -> list[tuple[str, str]]:
    """(original fused qkv weight name, HF prefix of its query/key/value Linears) per block."""
    stacks = (
        ("encoder.blocks", "videomae.encoder.layer", depth),
        ("decoder.blocks", "decoder.decoder_layers", decoder_depth),
    )
    return [
        (f"{ours}.{i}.attn.qkv.weight", f"{theirs}.{i}.attention.attention.")
        for ours, theirs, n in stacks
        for i in range(n)
    ]


def _videomae_state(hf: VideoMAEForPreTraining) -> dict[str, torch.Tensor]:
    """The original VideoMAE key layout (modeling_pretrain.py), written from the HF tensors by hand."""
    s, depths = hf.state_dict(), (hf.config.num_hidden_layers, hf.config.decoder_num_hidden_layers)
    out = {ours: s[theirs] for ours, theirs in _videomae_names(*depths)}
    for ours, prefix in _qkv_names(*depths):
        out[ours] = torch.cat([s[f"{prefix}{n}.weight"] for n in ("query", "key", "value")])
    return out


def _hf_state(state: dict[str, torch.Tensor], depth: int, decoder_depth: int) -> dict[str, torch.Tensor]:
    """The inverse: an original VideoMAE state dict in HF's layout (HF's key Linear has no bias either)."""
    out = {theirs: state[ours] for ours, theirs in _videomae_names(depth, decoder_depth)}
    for ours, prefix in _qkv_names(depth, decoder_depth):
        for n, weight in zip(("query", "key", "value"), state[ours].chunk(3), strict=True):
            out[f"{prefix}{n}.weight"] = weight
    return out


def test_original_videomae_checkpoint_converts_under_model_or_module(tmp_path):
    hf = _hf_model(True)
    state = _videomae_state(hf)
    for wrapper in ("model", "module"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: state, "epoch": 3}, path)
        model = load_videomae(path, num_frames=4, img_size=32, num_heads=2, decoder_num_heads=2)
        cfg = model.config["model"]
        assert (cfg["cls_token"], cfg["pred_masked_only"], cfg["tokenizer"]["pos_embed"]) == (False, True, "videomae")
        qkv_bias = model.state_dict()["encoder.blocks.1.attn.qkv.bias"]
        assert torch.equal(qkv_bias[:32], state["encoder.blocks.1.attn.q_bias"])
        assert torch.equal(qkv_bias[32:64], torch.zeros(32))
        assert torch.equal(qkv_bias[64:], state["encoder.blocks.1.attn.v_bias"])
    assert "decoder.embed.bias" not in model.state_dict()  # encoder_to_decoder has no bias
    # Original VideoMAE builds every LayerNorm with eps 1e-6; give the HF model that supplied the tensors the
    # same, and it must predict what the imported model predicts.
    assert set(_norm_eps(model.eval()).values()) == {1e-6}
    _set_norm_eps_(hf, 1e-6)
    (ours_loss, ours_removed), (theirs_loss, theirs_removed) = _predictions(model, hf)
    torch.testing.assert_close(ours_removed, theirs_removed, rtol=0, atol=1e-6)  # measured 1.8e-7
    torch.testing.assert_close(ours_loss, theirs_loss, rtol=0, atol=1e-6)


def test_videomae_conversion_names_missing_and_unexpected_keys():
    state = _videomae_state(_hf_model(True))
    del state["decoder.norm.bias"]
    state["encoder.blocks.0.gamma_1"] = torch.ones(32)
    with pytest.raises(CheckpointError, match=r"decoder\.norm\.bias.*encoder\.blocks\.0\.gamma_1"):
        load_videomae(state, num_frames=4, img_size=32, num_heads=2, decoder_num_heads=2)
    model_raw, _ = from_videomae({"model": _videomae_state(_hf_model(True))}, num_heads=2, decoder_num_heads=2)
    assert model_raw["depth"] == 2 and model_raw["decoder_depth"] == 2 and model_raw["qkv_bias"] is True


def test_load_model_opens_videomae_files_and_folders_through_the_checkpoint_format_hook(tmp_path):
    from anymae.core import load_model

    hf = _hf_model(False)
    hf.save_pretrained(tmp_path / "hf")
    direct = load_videomae(tmp_path / "hf").state_dict()
    via_core = load_model(tmp_path / "hf").state_dict()
    assert direct.keys() == via_core.keys() and all(torch.equal(direct[k], via_core[k]) for k in direct)

    # An original .pth is recognised too; this tiny one has no released width, so its heads must be given.
    torch.save({"model": _videomae_state(hf)}, tmp_path / "videomae.pth")
    with pytest.raises(CheckpointError, match="cannot infer the number of encoder heads for width 32"):
        load_model(tmp_path / "videomae.pth")


def test_an_anymae_video_mae_exports_to_videomae_s_layout_that_hugging_face_videomae_reads(tmp_path):
    """``anymae convert --to official`` on a video MAE writes VideoMAE's keys (q_bias / v_bias, no k bias, no
    position table). An independent reader, HF's VideoMAEForPreTraining given those tensors by the hand-written
    name table above, predicts what the anymae model predicts, even though the trained k bias is dropped; and
    anymae's own reader reads the file back to the same model."""
    from anymae.core.build.models import build_model
    from anymae.core.config import resolve_model_config
    from anymae.core.io.checkpoint import write_checkpoint
    from anymae.core.weights.convert import convert

    torch.manual_seed(0)
    raw = {"modality": "video", "tokenizer": {"num_frames": 4, "img_size": 32, "patch_size": 16},
           "masking": "tube", "target": "videomae", "cls_token": False, "decoder": "videomae",
           "pred_masked_only": True, "embed_dim": 384, "depth": 1, "num_heads": 6, "decoder_embed_dim": 192,
           "decoder_depth": 1, "decoder_num_heads": 3, "mask_ratio": 0.5}  # fmt: skip
    model = build_model(resolve_model_config(raw)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("qkv.bias"):
                param.normal_()  # a trained model's key third is not zero
            else:  # nor are its other biases and LayerNorms trivial
                param.add_(0.05 * torch.randn_like(param))
    source = write_checkpoint(
        {"format": "anymae", "config": model.config, "model": model.state_dict()}, tmp_path / "m.pt"
    )
    result = convert(source, tmp_path / "videomae.pth", to="official")
    assert any("num_frames=4" in note for note in result.notes)
    state = torch.load(result.path, weights_only=True)["model"]
    assert "encoder.blocks.0.attn.q_bias" in state and "encoder.blocks.0.attn.qkv.bias" not in state
    assert "encoder_to_decoder.weight" in state and "decoder.head.weight" in state and "mask_token" in state

    config = VideoMAEConfig(image_size=32, patch_size=16, num_channels=3, num_frames=4, tubelet_size=2,
                            hidden_size=384, num_hidden_layers=1, num_attention_heads=6, intermediate_size=1536,
                            decoder_hidden_size=192, decoder_num_hidden_layers=1, decoder_num_attention_heads=3,
                            decoder_intermediate_size=768, use_mean_pooling=False, norm_pix_loss=True)  # fmt: skip
    hf = VideoMAEForPreTraining(config).eval()
    hf.load_state_dict(_hf_state(state, 1, 1), strict=True)
    _set_norm_eps_(hf, 1e-6)  # anymae's VideoMAE recipe keeps VideoMAE's eps
    assert set(_norm_eps(model).values()) == {1e-6}
    (ours_loss, ours_removed), (theirs_loss, theirs_removed) = _predictions(model, hf, batch=2)
    # measured 2.1e-6 on values up to 3: the k bias adds a per-query constant that softmax removes up to rounding
    torch.testing.assert_close(ours_removed, theirs_removed, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours_loss, theirs_loss, rtol=0, atol=1e-6)

    again = load_videomae(result.path, num_frames=4, img_size=32).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, ::2] = True
    ours, theirs = model(x, mask=mask), again(x, mask=mask)
    assert torch.allclose(ours[1], theirs[1], atol=1e-5) and torch.allclose(ours[0], theirs[0], atol=1e-6)
