"""VideoMAE interop: Hugging Face VideoMAEForPreTraining (random init, tiny config) ported into anymae gives
the same decoder output and loss; original VideoMAE state dicts convert with strict key checks."""

from __future__ import annotations

import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEForPreTraining

from anymae.core.checkpoint import CheckpointError
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


def _tube_mask(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(N, 32) bool: 12 of the 16 spatial positions removed in both time slices, different per sample."""
    rows = []
    for _ in range(batch):
        spatial = torch.zeros(16, dtype=torch.bool)
        spatial[torch.randperm(16, generator=generator)[:12]] = True
        rows.append(spatial.repeat(2))
    return torch.stack(rows)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_hugging_face_videomae_port_matches_decoder_output_and_loss(norm_pix_loss):
    hf = _hf_model(norm_pix_loss)
    model = load_videomae(hf.state_dict(), config=hf.config.to_dict()).eval()
    assert model.config["model"]["target"] == ("videomae" if norm_pix_loss else "videomae_pixels")
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(3, 4, 3, 32, 32, generator=generator)  # HF layout (N, T, C, H, W)
    bool_masked_pos = _tube_mask(3, generator)
    with torch.no_grad():
        ours_loss, ours_pred, ours_mask = model(pixel_values.permute(0, 2, 1, 3, 4), mask=bool_masked_pos)
        theirs = hf(pixel_values, bool_masked_pos=bool_masked_pos)
    assert torch.equal(ours_mask.bool(), bool_masked_pos)
    ours_removed = ours_pred[bool_masked_pos].reshape(3, -1, ours_pred.shape[-1])  # ascending token order
    assert ours_removed.shape == theirs.logits.shape
    assert (ours_removed - theirs.logits).abs().max().item() <= 1e-5
    assert abs(ours_loss.item() - theirs.loss.item()) <= 1e-5
    assert (ours_pred[~bool_masked_pos] == 0).all()


def test_hugging_face_folder_round_trip(tmp_path):
    hf = _hf_model(True)
    hf.save_pretrained(tmp_path / "hf")
    model = load_videomae(tmp_path / "hf")
    ours = {k: v for k, v in model.state_dict().items()}
    _, converted = from_hugging_face_videomae(hf.config.to_dict(), hf.state_dict())
    assert set(ours) == set(converted)
    assert all(torch.equal(ours[k], converted[k]) for k in ours)


def _videomae_state(hf: VideoMAEForPreTraining) -> dict[str, torch.Tensor]:
    """The original VideoMAE key layout (modeling_pretrain.py), written from the HF tensors by hand."""
    s = {k.removeprefix("videomae."): v for k, v in hf.state_dict().items()}
    out = {
        "encoder.patch_embed.proj.weight": s["embeddings.patch_embeddings.projection.weight"],
        "encoder.patch_embed.proj.bias": s["embeddings.patch_embeddings.projection.bias"],
        "encoder.norm.weight": s["layernorm.weight"],
        "encoder.norm.bias": s["layernorm.bias"],
        "encoder_to_decoder.weight": s["encoder_to_decoder.weight"],
        "mask_token": s["mask_token"],
        "decoder.norm.weight": s["decoder.norm.weight"],
        "decoder.norm.bias": s["decoder.norm.bias"],
        "decoder.head.weight": s["decoder.head.weight"],
        "decoder.head.bias": s["decoder.head.bias"],
    }
    for ours, theirs, depth in (
        ("encoder.blocks", "encoder.layer", 2),
        ("decoder.blocks", "decoder.decoder_layers", 2),
    ):
        for i in range(depth):
            a, b = f"{ours}.{i}.", f"{theirs}.{i}."
            att = b + "attention.attention."
            out[a + "attn.qkv.weight"] = torch.cat([s[att + n + ".weight"] for n in ("query", "key", "value")])
            out[a + "attn.q_bias"] = s[att + "query.bias"]
            out[a + "attn.v_bias"] = s[att + "value.bias"]
            for mine, hf_name in (
                ("attn.proj", "attention.output.dense"),
                ("norm1", "layernorm_before"),
                ("norm2", "layernorm_after"),
                ("mlp.fc1", "intermediate.dense"),
                ("mlp.fc2", "output.dense"),
            ):
                for kind in ("weight", "bias"):
                    out[f"{a}{mine}.{kind}"] = s[f"{b}{hf_name}.{kind}"]
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


def test_an_anymae_video_mae_exports_to_videomae_s_layout_with_the_same_outputs(tmp_path):
    """``anymae convert --to official`` on a video MAE writes VideoMAE's keys (q_bias / v_bias, no k bias, no
    position table); VideoMAE's reader gives the same predictions, even though the trained k bias is dropped."""
    from anymae.core.build import build_model
    from anymae.core.checkpoint import write_checkpoint
    from anymae.core.config import resolve_model_config
    from anymae.core.convert import convert

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
    source = write_checkpoint(
        {"format": "anymae", "config": model.config, "model": model.state_dict()}, tmp_path / "m.pt"
    )
    result = convert(source, tmp_path / "videomae.pth", to="official")
    assert any("num_frames=4" in note for note in result.notes)
    state = torch.load(result.path, weights_only=True)["model"]
    assert "encoder.blocks.0.attn.q_bias" in state and "encoder.blocks.0.attn.qkv.bias" not in state
    assert "encoder_to_decoder.weight" in state and "decoder.head.weight" in state and "mask_token" in state
    again = load_videomae(result.path, num_frames=4, img_size=32).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, ::2] = True
    ours, theirs = model(x, mask=mask), again(x, mask=mask)
    assert torch.allclose(ours[1], theirs[1], atol=1e-5) and torch.allclose(ours[0], theirs[0], atol=1e-6)
