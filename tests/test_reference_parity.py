"""anymae against the MAE reference (section 1 of the reference notes) and Hugging Face ``ViTMAE``.

The reference forward pass below is written out step by step from the reference notes and uses only the
model's parameter tensors (and each timm block module, which holds the same weights); anymae's own
helpers are never used to compute an expected value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers  # the test extra: the Hugging Face parity tests must run, never skip
from torch import nn

from anymae.core import load_model
from anymae.core.build.models import build_model
from anymae.core.config import ConfigError, resolve_model_config
from anymae.modalities.image.tokenizer import PatchTokenizer2d
from anymae.plugins import load_registry

EPS_OFFICIAL = 1e-6


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def _model(registry, *, img_size=32, patch_size=8, in_chans=3, norm_pix_loss=False, embed_dim=64):
    raw = {
        "tokenizer": {"img_size": img_size, "patch_size": patch_size, "in_chans": in_chans},
        "embed_dim": embed_dim,
        "depth": 2,
        "num_heads": 4,
        "decoder_embed_dim": 32,
        "decoder_depth": 1,
        "decoder_num_heads": 4,
        "norm_pix_loss": norm_pix_loss,
    }
    return build_model(resolve_model_config(raw, registry), registry=registry)


def _perturb_(module: nn.Module, *, skip: tuple[str, ...] = (), scale: float = 0.1) -> None:
    """Add noise to every parameter so that zero biases and unit LayerNorms cannot hide a mistake."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not any(s in name for s in skip):
                param.add_(scale * torch.randn_like(param))


def ref_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C) with einsum 'nchpwq->nhwpqc', as the official code."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def official_sincos_2d(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """(1 + L, dim): zero CLS row, then x (column) in the first D/2 channels, y (row) in the second."""

    def half(pos: np.ndarray) -> np.ndarray:
        w = 10000.0 ** (-np.arange(dim // 4, dtype=np.float64) / (dim / 4))
        angles = np.outer(pos.astype(np.float64), w)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    index = np.arange(grid_h * grid_w)
    table = np.concatenate([half(index % grid_w), half(index // grid_w)], axis=1)
    return torch.from_numpy(np.concatenate([np.zeros((1, dim)), table], axis=0)).float()


def reference_mae_forward(model, imgs, noise, *, mask_ratio, norm_pix_loss, eps):
    """The MAE forward pass of reference section 1 -> (loss, pred (N, L, P), mask (N, L))."""
    tok, enc, dec = model.tokenizer, model.encoder, model.decoder
    p = tok.patch_size
    n, _, h, w = imgs.shape
    gh, gw = h // p, w // p
    num_tokens = gh * gw

    # embed: the Conv is a Linear over each patch; its (D, C, p, p) weight in patchify's (p, q, c) order
    weight = tok.proj.weight  # (D, C, p, p)
    dim = weight.shape[0]
    x = ref_patchify(imgs, p) @ weight.permute(0, 2, 3, 1).reshape(dim, -1).T + tok.proj.bias  # (N, L, D)

    # fixed positions, added before masking
    enc_pos = official_sincos_2d(gh, gw, dim)
    x = x + enc_pos[1:]

    # masking: argsort of the noise, small is kept
    len_keep = int(num_tokens * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x = torch.gather(x, 1, ids_keep[..., None].repeat(1, 1, dim))  # (N, L_vis, D)
    mask = torch.ones(n, num_tokens)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)

    # encoder: CLS (+ its zero position) after masking, blocks, final LayerNorm
    cls = (enc.cls_token + enc_pos[:1]).expand(n, -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in enc.blocks:
        x = blk(x)
    x = F.layer_norm(x, (dim,), enc.norm.weight, enc.norm.bias, eps=eps)

    # decoder
    x = F.linear(x, dec.embed.weight, dec.embed.bias)  # (N, 1 + L_vis, D_dec)
    dec_dim = x.shape[-1]
    mask_tokens = dec.mask_token.repeat(n, num_tokens + 1 - x.shape[1], 1)
    body = torch.cat([x[:, 1:], mask_tokens], dim=1)
    body = torch.gather(body, 1, ids_restore[..., None].repeat(1, 1, dec_dim))  # unshuffle
    x = torch.cat([x[:, :1], body], dim=1) + official_sincos_2d(gh, gw, dec_dim)
    for blk in dec.blocks:
        x = blk(x)
    x = F.layer_norm(x, (dec_dim,), dec.norm.weight, dec.norm.bias, eps=eps)
    pred = F.linear(x, dec.pred.weight, dec.pred.bias)[:, 1:]  # drop CLS

    # target and loss
    target = ref_patchify(imgs, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    loss = (per_patch * mask).sum() / mask.sum()
    return loss, pred, mask


# --- patchify -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("chans", "size", "patch"),
    [(3, (32, 32), 8), (3, (32, 48), 8), (1, (16, 32), 4), (5, (24, 16), 8)],
)
def test_patchify_matches_official_einsum_order(chans, size, patch):
    tok = PatchTokenizer2d(img_size=size, patch_size=patch, in_chans=chans, embed_dim=16)
    imgs = torch.randn(2, chans, *size)
    patches = tok.patchify(imgs)
    assert patches.shape == (2, (size[0] // patch) * (size[1] // patch), patch * patch * chans)
    assert torch.equal(patches, ref_patchify(imgs, patch))


def test_patchify_orders_values_row_then_column_then_channel():
    tok = PatchTokenizer2d(img_size=(4, 8), patch_size=2, in_chans=2, embed_dim=8)
    imgs = torch.arange(2 * 4 * 8, dtype=torch.float32).reshape(1, 2, 4, 8)
    patches = tok.patchify(imgs)  # grid 2 x 4
    # token 5 = row 1, column 1 -> pixels (y, x) in {2, 3} x {2, 3}; value = c*32 + y*8 + x
    expected = [c * 32 + y * 8 + x for y in (2, 3) for x in (2, 3) for c in (0, 1)]
    assert patches[0, 5].tolist() == expected


@pytest.mark.parametrize(("chans", "size"), [(3, (32, 32)), (3, (32, 64)), (1, (16, 40)), (5, (24, 16))])
def test_unpatchify_inverts_patchify(chans, size):
    tok = PatchTokenizer2d(img_size=size, patch_size=8, in_chans=chans, embed_dim=16)
    imgs = torch.randn(3, chans, *size)
    assert torch.equal(tok.unpatchify(tok.patchify(imgs)), imgs)


def test_tokens_follow_patchify_order():
    # The Conv embedding of token i must see exactly the pixels of patch i.
    tok = PatchTokenizer2d(img_size=(16, 32), patch_size=8, in_chans=3, embed_dim=16)
    imgs = torch.randn(2, 3, 16, 32)
    weight = tok.proj.weight.permute(0, 2, 3, 1).reshape(16, -1)  # (D, p*p*C) in (p, q, c) order
    expected = ref_patchify(imgs, 8) @ weight.T + tok.proj.bias
    torch.testing.assert_close(tok(imgs), expected, rtol=0, atol=1e-5)


def test_image_size_not_divisible_by_patch_raises_with_both_numbers():
    with pytest.raises(ValueError, match=r"30.*8|8.*30"):
        PatchTokenizer2d(img_size=(30, 32), patch_size=8, in_chans=3, embed_dim=16)


def test_image_size_not_divisible_by_patch_is_a_config_error(registry):
    raw = {"tokenizer": {"img_size": 36, "patch_size": 16}}
    with pytest.raises(ConfigError, match=r"36.*16"):
        resolve_model_config(raw, registry)


def test_patchify_rejects_images_of_the_wrong_shape():
    tok = PatchTokenizer2d(img_size=(32, 32), patch_size=8, in_chans=3, embed_dim=16)
    with pytest.raises(ValueError, match="32"):
        tok.patchify(torch.randn(1, 3, 32, 40))


# --- init -----------------------------------------------------------------------------------------------
def test_init_linear_is_xavier_uniform_with_zero_bias(registry):
    torch.manual_seed(0)
    model = _model(registry)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) >= 2 * 4 + 4 + 2  # qkv, proj, fc1, fc2 per block + decoder embed/pred
    for name, lin in linears:
        fan_out, fan_in = lin.weight.shape  # qkv is one fused (3D, D) Linear in the official init
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert lin.weight.abs().max().item() <= bound + 1e-7, name
        var = lin.weight.var().item()
        assert abs(var / (bound**2 / 3) - 1) < 0.15, f"{name}: variance {var:.3g} vs xavier {bound**2 / 3:.3g}"
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias)), name


def test_init_layernorm_is_one_and_zero(registry):
    model = _model(registry)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 + 2 * 1 + 1  # two per block + final norms
    for norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
        assert norm.eps == EPS_OFFICIAL


def test_init_cls_and_mask_tokens_are_normal_std_002(registry):
    torch.manual_seed(0)
    model = _model(registry, embed_dim=256)
    for token in (model.encoder.cls_token, model.decoder.mask_token):
        assert 0.014 < token.std().item() < 0.026
        assert abs(token.mean().item()) < 0.01


def test_init_patch_embed_is_xavier_of_the_linear_view(registry):
    torch.manual_seed(0)
    model = _model(registry)
    weight = model.tokenizer.proj.weight  # (D, C, p, p)
    fan_out, fan_in = 64, 3 * 8 * 8  # viewed as a Linear (D, C*p*p)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert weight.abs().max().item() <= bound + 1e-7
    # PyTorch's Conv default (variance 1/(3*fan_in)) or xavier of the 4-D Conv would both be ~4x off.
    assert abs(weight.var().item() / (bound**2 / 3) - 1) < 0.15


# --- reference forward ----------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize(("chans", "size"), [(3, (32, 32)), (1, (32, 48))])
def test_forward_matches_reference_mae_forward(registry, norm_pix_loss, chans, size):
    torch.manual_seed(0)
    model = _model(registry, img_size=list(size), in_chans=chans, norm_pix_loss=norm_pix_loss).eval()
    _perturb_(model)
    imgs = torch.randn(3, chans, *size)
    num_tokens = (size[0] // 8) * (size[1] // 8)
    noise = torch.rand(3, num_tokens)
    with torch.no_grad():
        loss, pred, mask = model(imgs, noise=noise)
        ref_loss, ref_pred, ref_mask = reference_mae_forward(
            model, imgs, noise, mask_ratio=0.75, norm_pix_loss=norm_pix_loss, eps=EPS_OFFICIAL
        )
    assert torch.equal(mask, ref_mask)
    assert pred.shape == ref_pred.shape == (3, num_tokens, 8 * 8 * chans)
    assert (pred - ref_pred).abs().max().item() <= 1e-5
    assert abs(loss.item() - ref_loss.item()) <= 1e-5


def test_forward_target_uses_unbiased_variance_with_eps_inside_the_root(registry):
    model = _model(registry, norm_pix_loss=True)
    torch.manual_seed(0)
    imgs = torch.randn(2, 3, 32, 32)
    # Patch 0 of image 0 is near-flat (a constant plus 1e-4 noise: variance ~1e-8, far below eps 1e-6), so eps
    # decides its target: inside the root it gives values ~0.1, outside it (or eps 0) ~1, eps 1e-5 ~0.03.
    imgs[0, :, :8, :8] = 0.5 + 1e-4 * torch.randn(3, 8, 8)
    patches = ref_patchify(imgs, 8).double()
    mean = patches.mean(-1, keepdim=True)
    var = ((patches - mean) ** 2).sum(-1, keepdim=True) / (patches.shape[-1] - 1)
    assert var[0, 0].item() < 1e-2 * 1e-6
    expected = ((patches - mean) / torch.sqrt(var + 1e-6)).float()
    target = model.forward_target(imgs)
    torch.testing.assert_close(target[1], expected[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(target[0, 1:], expected[0, 1:], rtol=0, atol=1e-5)
    # float32 holds the flat patch's values near 0.5 to ~3e-8, which the 1e-3 divisor turns into ~3e-5 (measured
    # 3.3e-5); a misplaced or wrong eps is off by 0.19 (eps 1e-5) to 2.5 (eps outside the root, or 0).
    assert expected[0, 0].abs().max().item() > 0.1
    torch.testing.assert_close(target[0, 0], expected[0, 0], rtol=0, atol=1e-4)


def test_loss_is_the_mean_over_removed_patches_only(registry):
    model = _model(registry).eval()
    imgs = torch.randn(2, 3, 32, 32)
    target = ref_patchify(imgs, 8)
    pred = target.clone()
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1.0
    pred[:, 12:] += 100.0  # errors on kept patches must not count
    pred[:, :12] += 2.0  # every removed value off by 2 -> per-patch MSE 4
    assert model.forward_loss(imgs, pred, mask).item() == pytest.approx(4.0, abs=1e-5)


# --- Hugging Face ViTMAE --------------------------------------------------------------------------------
HF_TABLES = ("position_embeddings", "decoder_pos_embed")


def _hf_config(*, norm_pix_loss: bool, mask_ratio: float = 0.75):
    return transformers.ViTMAEConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        image_size=32,
        patch_size=8,
        num_channels=3,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=128,
        norm_pix_loss=norm_pix_loss,
        mask_ratio=mask_ratio,
    )


def _set_hf_tables_(hf) -> None:
    """Released ViTMAE checkpoints hold the official sin-cos tables; a freshly built transformers 5.x
    model may leave them at zero, so write them explicitly."""
    with torch.no_grad():
        embeddings = hf.embeddings if hasattr(hf, "embeddings") else hf.vit.embeddings
        embeddings.position_embeddings.copy_(official_sincos_2d(4, 4, 64)[None])
        if hasattr(hf, "decoder"):
            hf.decoder.decoder_pos_embed.copy_(official_sincos_2d(4, 4, 32)[None])


def _hf_pretraining_folder(tmp_path, *, norm_pix_loss: bool):
    torch.manual_seed(0)
    hf = transformers.ViTMAEForPreTraining(_hf_config(norm_pix_loss=norm_pix_loss)).eval()
    _perturb_(hf, skip=HF_TABLES)
    _set_hf_tables_(hf)
    hf.save_pretrained(tmp_path)
    return hf


def _rename_safetensors_keys(folder, old: str, new: str) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    save_file(
        {k.replace(old, new): v for k, v in state.items()},
        folder / "model.safetensors",
        metadata={"format": "pt"},
    )


def _assert_matches_hf(model, hf) -> None:
    torch.manual_seed(1)
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        out = hf(pixel_values=imgs, noise=noise)
        loss, pred, mask = model(imgs, noise=noise)
    assert torch.equal(mask, out.mask)
    assert pred.shape == out.logits.shape == (2, 16, 8 * 8 * 3)
    assert (pred - out.logits).abs().max().item() <= 1e-5
    assert abs(loss.item() - out.loss.item()) <= 1e-5


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_hugging_face_save_pretrained_folder_matches_vitmae_forward(registry, tmp_path, norm_pix_loss):
    hf = _hf_pretraining_folder(tmp_path, norm_pix_loss=norm_pix_loss)
    model = load_model(tmp_path, registry=registry).eval()
    assert model.config["model"]["norm_pix_loss"] is norm_pix_loss
    _assert_matches_hf(model, hf)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_hugging_face_hub_layout_folder_matches_vitmae_forward(registry, tmp_path, norm_pix_loss):
    # The facebook/vit-mae-* checkpoints name decoder blocks decoder.decoder_layers.{j} (reference section 5);
    # transformers 5.x save_pretrained writes decoder.decoder_encoder.layer.{j}. Check the Hub names here.
    hf = _hf_pretraining_folder(tmp_path, norm_pix_loss=norm_pix_loss)
    _rename_safetensors_keys(tmp_path, "decoder.decoder_encoder.layer.", "decoder.decoder_layers.")
    model = load_model(tmp_path, registry=registry).eval()
    _assert_matches_hf(model, hf)


def test_hugging_face_layernorm_eps_is_carried(registry, tmp_path):
    _hf_pretraining_folder(tmp_path, norm_pix_loss=False)
    _rename_safetensors_keys(tmp_path, "decoder.decoder_encoder.layer.", "decoder.decoder_layers.")
    model = load_model(tmp_path, registry=registry)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 + 2 + 1
    assert all(norm.eps == 1e-12 for norm in norms)


def test_hugging_face_logits_are_in_patchify_order(registry):
    hf = transformers.ViTMAEForPreTraining(_hf_config(norm_pix_loss=False))
    imgs = torch.randn(2, 3, 32, 32)
    assert torch.equal(hf.patchify(imgs), ref_patchify(imgs, 8))
    tok = PatchTokenizer2d(img_size=(32, 32), patch_size=8, in_chans=3, embed_dim=16)
    assert torch.equal(hf.patchify(imgs), tok.patchify(imgs))


def _hf_encoder_folder(tmp_path):
    torch.manual_seed(0)
    hf = transformers.ViTMAEModel(_hf_config(norm_pix_loss=True, mask_ratio=0.0)).eval()
    _perturb_(hf, skip=HF_TABLES)
    _set_hf_tables_(hf)
    hf.save_pretrained(tmp_path)
    return hf


def test_hugging_face_encoder_only_folder_loads_encoder_only(registry, tmp_path):
    _hf_encoder_folder(tmp_path)
    model = load_model(tmp_path, registry=registry)
    assert model.decoder is None
    with pytest.raises(RuntimeError, match="decoder"):
        model(torch.randn(1, 3, 32, 32))


def test_hugging_face_encoder_matches_encode_with_identity_noise(registry, tmp_path):
    # ViTMAEModel always shuffles its tokens; with noise = arange the shuffle is the identity, so with
    # mask_ratio 0 its last_hidden_state is CLS + every patch in the original order, like encode().
    hf = _hf_encoder_folder(tmp_path)
    model = load_model(tmp_path, registry=registry).eval()
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.encode(imgs)
        theirs = hf(pixel_values=imgs, noise=torch.arange(16.0).expand(2, -1)).last_hidden_state
    assert ours.shape == theirs.shape == (2, 1 + 16, 64)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_hugging_face_encoder_matches_encode_after_unshuffling(registry, tmp_path):
    # With random noise the tokens come back shuffled; attention is permutation-equivariant, so
    # unshuffling with ids_restore must give encode()'s tokens.
    hf = _hf_encoder_folder(tmp_path)
    model = load_model(tmp_path, registry=registry).eval()
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.encode(imgs)
        out = hf(pixel_values=imgs, noise=torch.rand(2, 16))
    theirs = out.last_hidden_state
    body = torch.gather(theirs[:, 1:], 1, out.ids_restore[..., None].expand(-1, -1, 64))
    assert not torch.equal(out.ids_restore, torch.arange(16).expand(2, -1))
    assert (ours[:, :1] - theirs[:, :1]).abs().max().item() <= 1e-5
    assert (ours[:, 1:] - body).abs().max().item() <= 1e-5
