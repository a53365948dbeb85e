"""Audio tokenizer, positions, time/frequency masking, the local decoder and AudioMAE checkpoint interop."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer_v2_cr import SwinTransformerV2CrBlock
from timm.models.vision_transformer import Block
from torch import nn

from anymae.core.build.models import build_model
from anymae.core.config import ConfigError, load_config, resolve_config, resolve_model_config
from anymae.core.io.checkpoint import CheckpointError
from anymae.core.model.masking import shuffle_from_noise
from anymae.modalities.audio.decoder import LocalDecoder, SwinBlock, shift_attention_mask
from anymae.modalities.audio.interop import load_audiomae
from anymae.modalities.audio.masking import time_frequency_mask, time_frequency_masking
from anymae.modalities.audio.tokenizer import SpectrogramTokenizer
from anymae.testing import check_modality

LN = partial(nn.LayerNorm, eps=1e-6)


# --- independent references ----------------------------------------------------------------------------
def audiomae_1d(width: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def audiomae_flexible_table(width: int, patch_hw: tuple[int, int]) -> np.ndarray:
    """get_2d_sincos_pos_embed_flexible(width, patch_hw, cls_token=True), from its documented semantics."""
    grid_h = np.arange(patch_hw[0], dtype=np.float32)
    grid_w = np.arange(patch_hw[1], dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, patch_hw[0], patch_hw[1])  # w first
    emb = np.concatenate([audiomae_1d(width // 2, grid[0]), audiomae_1d(width // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros((1, width)), emb], axis=0)


def audiomae_patch_hw(target_length: int, num_mel_bins: int, p: int) -> tuple[int, int]:
    """PatchEmbed_org(img_size=(T, F)).patch_hw = (img_size[1] // p, img_size[0] // p): (F/p, T/p)."""
    return num_mel_bins // p, target_length // p


# --- tokenizer ---------------------------------------------------------------------------------------
def test_tokenizer_grid_is_time_by_frequency_and_patchify_is_nchpwq_to_nhwpqc():
    tok = SpectrogramTokenizer(target_length=1024, num_mel_bins=128, patch_size=16, embed_dim=8)
    assert tok.grid == (64, 8) and tok.num_tokens == 512 and tok.patch_dim == 256
    x = torch.randn(2, 1, 1024, 128)
    # AudioMAE's patchify, written out: reshape + einsum.
    ref = torch.einsum("nchpwq->nhwpqc", x.reshape(2, 1, 64, 16, 8, 16)).reshape(2, 512, 256)
    assert torch.equal(tok.patchify(x), ref)
    assert torch.equal(tok.unpatchify(ref), x)
    # Token k = t * 8 + f is the Conv2d patch at (t, f).
    tokens = tok(x)
    t, f = 5, 3
    patch = x[:, :, t * 16 : (t + 1) * 16, f * 16 : (f + 1) * 16].reshape(2, -1)
    assert torch.allclose(tokens[:, t * 8 + f], patch @ tok.proj.weight.view(8, -1).T + tok.proj.bias, atol=1e-5)


@pytest.mark.parametrize(("target_length", "num_mel_bins"), [(1024, 128), (512, 128), (128, 128), (96, 64)])
def test_position_table_is_audiomaes_flexible_table_in_its_orientation(target_length, num_mel_bins):
    tok = SpectrogramTokenizer(target_length=target_length, num_mel_bins=num_mel_bins, patch_size=16, embed_dim=8)
    ref = audiomae_flexible_table(64, audiomae_patch_hw(target_length, num_mel_bins, 16))
    assert torch.allclose(tok.position_table(64), torch.from_numpy(ref[1:]).float(), atol=1e-6)


def test_position_table_is_not_the_plain_time_frequency_table():
    # Guard against "fixing" the orientation: token (t=1, f=0) is index 8 and is encoded as column 8, row 0.
    tok = SpectrogramTokenizer(target_length=1024, num_mel_bins=128, patch_size=16, embed_dim=8)
    table = tok.position_table(16)
    assert torch.allclose(table[8, :8], torch.from_numpy(audiomae_1d(8, np.array([8.0]))[0]).float())
    assert torch.allclose(table[8, 8:], torch.from_numpy(audiomae_1d(8, np.array([0.0]))[0]).float())


def test_tokenizer_rejects_wrong_shapes_and_configs_name_the_key():
    tok = SpectrogramTokenizer(target_length=64, num_mel_bins=32, patch_size=16, embed_dim=8)
    with pytest.raises(ValueError, match=r"\(N, 1, 64, 32\)"):
        tok(torch.zeros(1, 1, 32, 64))
    with pytest.raises(ConfigError, match="target_length 1000 is not divisible by patch_size 16"):
        resolve_model_config({"modality": "audio", "tokenizer": {"target_length": 1000}})
    with pytest.raises(ConfigError, match="num_mel_bins 100 is not divisible by patch_size 16"):
        resolve_model_config({"modality": "audio", "tokenizer": {"num_mel_bins": 100}})
    with pytest.raises(ConfigError, match=r"data\.train_crop"):
        resolve_config({"model": {"modality": "audio"}, "data": {"train_crop": "middle"}})


@pytest.mark.parametrize(
    "model",
    [
        {},
        {"decoder": "local", "decoder_options": {"window_size": [2, 2]}},
        {"decoder": "local", "masking": "time_frequency", "cls_token": False, "pred_masked_only": True},
        {"masking": "time"},
        {"masking": "frequency"},
    ],
)
def test_audio_modality_satisfies_the_contract(model):
    check_modality(
        "audio", tokenizer={"target_length": 64, "num_mel_bins": 32, "patch_size": 16}, model=model, mask_ratio=0.5
    )


# --- time/frequency masking ----------------------------------------------------------------------------
def reference_random_masking_2d(noise_t, noise_f, mask_t_prob, mask_f_prob):
    """AudioMAE's random_masking_2d written out from its semantics (id2res sort) -> mask, ids_keep, ids_restore."""
    n, t = noise_t.shape
    f = noise_f.shape[1]
    keep_t, keep_f = int(t * (1 - mask_t_prob)), int(f * (1 - mask_f_prob))
    mask_t = torch.ones(n, t)
    mask_t[:, :keep_t] = 0
    mask_t = torch.gather(mask_t, 1, torch.argsort(torch.argsort(noise_t, dim=1), dim=1))
    mask_f = torch.ones(n, f)
    mask_f[:, :keep_f] = 0
    mask_f = torch.gather(mask_f, 1, torch.argsort(torch.argsort(noise_f, dim=1), dim=1))
    mask = 1 - (1 - mask_t[:, :, None]) * (1 - mask_f[:, None, :])  # (N, T, F)
    id2res = torch.arange(n * t * f, dtype=torch.float32).reshape(n, t, f) + 999 * mask
    id2res2 = torch.argsort(id2res.flatten(1), dim=1)
    return mask.flatten(1), id2res2[:, : keep_t * keep_f], torch.argsort(id2res2, dim=1)


@pytest.mark.parametrize(("p_t", "p_f"), [(0.7, 0.3), (0.2, 0.2), (0.5, 0.0), (0.0, 0.5)])
def test_time_frequency_masking_matches_audiomae_random_masking_2d(p_t, p_f):
    grid = (64, 8)
    strategy = time_frequency_masking(mask_t_prob=p_t, mask_f_prob=p_f)
    noise, len_keep = strategy(
        batch=3, grid=grid, mask_ratio=0.8, device="cpu", generator=torch.Generator().manual_seed(5)
    )
    g = torch.Generator().manual_seed(5)
    noise_t, noise_f = torch.rand(3, 64, generator=g), torch.rand(3, 8, generator=g)  # the official draw order
    ref_mask, ref_keep, ref_restore = reference_random_masking_2d(noise_t, noise_f, p_t, p_f)
    ids_keep, ids_restore, mask = shuffle_from_noise(noise, len_keep)
    assert len_keep == int(64 * (1 - p_t)) * int(8 * (1 - p_f))
    assert torch.equal(mask, ref_mask)
    assert torch.equal(ids_keep, ref_keep)  # kept tokens in index order, as the official sort
    assert torch.equal(ids_restore, ref_restore)


def test_registered_variants_read_mask_ratio_per_axis():
    from anymae.plugins import get_registry

    registry = get_registry()
    grid = (8, 4)
    for name, rows, cols in (("time_frequency", 0.5, 0.5), ("time", 0.5, 0.0), ("frequency", 0.0, 0.5)):
        noise, len_keep = registry.masking_strategy(name)(batch=4, grid=grid, mask_ratio=0.5, device="cpu")
        removed = noise.view(4, 8, 4).bool()
        assert len_keep == int(8 * (1 - rows)) * int(4 * (1 - cols))
        assert (noise.sum(1) == 32 - len_keep).all()
        # Whole rows / columns: a removed token's row or column is entirely removed.
        full_rows = removed.all(dim=2)
        full_cols = removed.all(dim=1)
        assert torch.equal(removed, full_rows[:, :, None] | full_cols[:, None, :])
    with pytest.raises(ValueError, match="mask_t_prob"):
        time_frequency_mask(batch=1, grid=(2, 4), mask_t_prob=0.9, mask_f_prob=0.0)


# --- local decoder ---------------------------------------------------------------------------------------
def timm_reference_block(ours: SwinBlock, grid, window, shift) -> SwinTransformerV2CrBlock:
    """timm's Swin-V2-cr block with AudioMAE's semantics restored: explicit shift, tau -> logit_scale."""
    dim = ours.norm1.normalized_shape[0]
    ref = SwinTransformerV2CrBlock(
        dim=dim, num_heads=ours.attn.num_heads, feat_size=grid, window_size=window, shift_size=(0, 0), norm_layer=LN
    )
    ref.shift_size = shift
    ref.attn_mask = ref.get_attn_mask(device=torch.device("cpu"), dtype=torch.float32)
    state = {k: v for k, v in ours.state_dict().items() if k != "attn.tau"}
    state["attn.logit_scale"] = -torch.log(ours.attn.tau.detach())  # 1 / tau = exp(logit_scale)
    ref.load_state_dict(state)
    return ref.eval()


@pytest.mark.parametrize("shift", [(0, 0), (2, 0), (2, 2)])
def test_swin_block_matches_timm_swin_v2_cr_with_audiomae_semantics(shift):
    torch.manual_seed(0)
    grid, window = (8, 8), (4, 4)
    ours = SwinBlock(dim=32, num_heads=4, grid=grid, window=window, shift=shift, mlp_ratio=4.0, qkv_bias=True,
                     norm_layer=LN).eval()  # fmt: skip
    for p in ours.parameters():
        nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        ours.attn.tau.uniform_(0.05, 2.0)
    ref = timm_reference_block(ours, grid, window, shift)
    x = torch.randn(2, 64, 32)
    assert torch.allclose(ours(x), ref(x.view(2, 8, 8, 32)).reshape(2, 64, 32), atol=1e-5)


def test_local_decoder_alternates_shifts_and_select_returns_the_selected_rows():
    torch.manual_seed(0)
    grid = (64, 8)
    dec = LocalDecoder(in_dim=24, embed_dim=32, depth=4, num_heads=16, mlp_ratio=4.0, qkv_bias=True, out_dim=256,
                       pos_table=torch.randn(512, 32), norm_layer=LN, grid=grid, num_prefix=1).eval()  # fmt: skip
    assert [b.shift for b in dec.blocks] == [(0, 0), (2, 0), (0, 0), (2, 0)]
    assert all(b.window == (4, 4) for b in dec.blocks)
    latent = torch.randn(2, 1 + 100, 24)
    ids_restore = torch.stack([torch.randperm(512) for _ in range(2)])
    full = dec(latent, ids_restore)
    assert full.shape == (2, 512, 256)
    select = torch.stack([torch.randperm(512)[:50] for _ in range(2)])
    assert torch.allclose(
        dec(latent, ids_restore, select), torch.gather(full, 1, select[..., None].expand(-1, -1, 256))
    )
    # Local attention: a token's prediction depends only on tokens within reach of its windows.
    with pytest.raises(ValueError, match="not divisible by window"):
        LocalDecoder(in_dim=8, embed_dim=16, depth=1, num_heads=2, mlp_ratio=4.0, qkv_bias=True, out_dim=4,
                     pos_table=torch.zeros(30, 16), norm_layer=LN, grid=(6, 5), num_prefix=0)  # fmt: skip
    with pytest.raises(ValueError, match="2-D token grid"):
        LocalDecoder(in_dim=8, embed_dim=16, depth=1, num_heads=2, mlp_ratio=4.0, qkv_bias=True, out_dim=4,
                     pos_table=torch.zeros(8, 16), norm_layer=LN, grid=(2, 2, 2), num_prefix=0)  # fmt: skip


def test_local_decoder_attention_is_local():
    torch.manual_seed(0)
    dec = LocalDecoder(in_dim=8, embed_dim=16, depth=1, num_heads=2, mlp_ratio=4.0, qkv_bias=True, out_dim=4,
                       pos_table=torch.zeros(64, 16), norm_layer=LN, grid=(16, 4), num_prefix=0).eval()  # fmt: skip
    ids = torch.arange(64)[None]
    latent = torch.randn(1, 64, 8)
    base = dec(latent, ids)
    changed = latent.clone()
    changed[0, 0] += 1.0  # token (0, 0): its 4x4 window is rows 0-3
    delta = (dec(changed, ids) - base).abs().sum(-1).view(16, 4)
    assert delta[:4].sum() > 0 and delta[4:].sum() == 0


def test_decoder_options_are_validated_against_the_decoder():
    with pytest.raises(ConfigError, match="window_siz"):
        resolve_model_config({"modality": "audio", "decoder": "local", "decoder_options": {"window_siz": [4, 4]}})


# --- AudioMAE checkpoints ------------------------------------------------------------------------------------
T, FREQ, P, D, DEPTH, HEADS, D_DEC, DEC_DEPTH = 128, 64, 16, 64, 2, 4, 32, 2


def audiomae_state(local: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with AudioMAE's key names and shapes (models_mae.MaskedAutoencoderViT)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return 0.2 * torch.randn(*shape, generator=g)

    hw = audiomae_patch_hw(T, FREQ, P)
    sd = {
        "cls_token": r(1, 1, D),
        "pos_embed": torch.from_numpy(audiomae_flexible_table(D, hw)).float()[None],
        "patch_embed.proj.weight": r(D, 1, P, P),
        "patch_embed.proj.bias": r(D),
        "norm.weight": 1 + r(D),
        "norm.bias": r(D),
        "mask_token": r(1, 1, D_DEC),
        "decoder_pos_embed": torch.from_numpy(audiomae_flexible_table(D_DEC, hw)).float()[None],
        "decoder_embed.weight": r(D_DEC, D),
        "decoder_embed.bias": r(D_DEC),
        "decoder_norm.weight": 1 + r(D_DEC),
        "decoder_norm.bias": r(D_DEC),
        "decoder_pred.weight": r(P * P, D_DEC),
        "decoder_pred.bias": r(P * P),
    }
    for prefix, dim, depth in (("blocks", D, DEPTH), ("decoder_blocks", D_DEC, DEC_DEPTH)):
        for i in range(depth):
            b = f"{prefix}.{i}."
            for name, shape in (
                ("norm1", (dim,)), ("attn.qkv", (3 * dim, dim)), ("attn.proj", (dim, dim)), ("norm2", (dim,)),
                ("mlp.fc1", (4 * dim, dim)), ("mlp.fc2", (dim, 4 * dim)),
            ):  # fmt: skip
                sd[b + name + ".weight"] = (1 + r(*shape)) if name.startswith("norm") else r(*shape)
                sd[b + name + ".bias"] = r(shape[0])
            if local and prefix == "decoder_blocks":
                sd[b + "attn.tau"] = 0.5 + torch.rand(16, generator=g)
                sd[b + "attn.meta_mlp.fc1.weight"] = r(384, 2)
                sd[b + "attn.meta_mlp.fc1.bias"] = r(384)
                sd[b + "attn.meta_mlp.fc2.weight"] = r(16, 384)
                sd[b + "attn.meta_mlp.fc2.bias"] = r(16)
    return sd


def reference_forward(sd, x, noise, *, local: bool):
    """AudioMAE's forward (mask_ratio 0.8, norm_pix_loss) from the raw tensors, with timm blocks."""
    n = x.shape[0]
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=P)
    tokens = tokens.flatten(2).transpose(1, 2) + sd["pos_embed"][:, 1:]
    length = tokens.shape[1]
    len_keep = int(length * (1 - 0.8))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    h = torch.gather(tokens, 1, ids_shuffle[:, :len_keep, None].expand(-1, -1, D))
    mask = torch.ones(n, length)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    h = torch.cat([(sd["cls_token"] + sd["pos_embed"][:, :1]).expand(n, -1, -1), h], dim=1)
    for i in range(DEPTH):
        block = Block(D, HEADS, 4.0, qkv_bias=True, norm_layer=LN).eval()
        block.load_state_dict({k[len(f"blocks.{i}.") :]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")})
        h = block(h)
    h = F.layer_norm(h, (D,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    h = F.linear(h, sd["decoder_embed.weight"], sd["decoder_embed.bias"])
    body = torch.cat([h[:, 1:], sd["mask_token"].expand(n, length + 1 - h.shape[1], -1)], dim=1)
    body = torch.gather(body, 1, ids_restore[..., None].expand(-1, -1, D_DEC))
    h = torch.cat([h[:, :1], body], dim=1) + sd["decoder_pos_embed"]
    grid = (T // P, FREQ // P)
    if local:
        h = h[:, 1:]
    for j in range(DEC_DEPTH):
        block_sd = {k[len(f"decoder_blocks.{j}.") :]: v for k, v in sd.items() if k.startswith(f"decoder_blocks.{j}.")}
        if local:
            shift = (0, 0) if j % 2 == 0 else (2, 0)
            block = SwinTransformerV2CrBlock(dim=D_DEC, num_heads=16, feat_size=grid, window_size=(4, 4), norm_layer=LN)
            block.shift_size = shift
            block.attn_mask = block.get_attn_mask(device=torch.device("cpu"), dtype=torch.float32)
            block_sd["attn.logit_scale"] = -torch.log(block_sd.pop("attn.tau"))
            block.load_state_dict(block_sd)
            h = block.eval()(h.view(n, *grid, D_DEC)).reshape(n, -1, D_DEC)
        else:
            block = Block(D_DEC, 16, 4.0, qkv_bias=True, norm_layer=LN).eval()
            block.load_state_dict(block_sd)
            h = block(h)
    h = F.layer_norm(h, (D_DEC,), sd["decoder_norm.weight"], sd["decoder_norm.bias"], eps=1e-6)
    pred = F.linear(h, sd["decoder_pred.weight"], sd["decoder_pred.bias"])
    pred = pred if local else pred[:, 1:]
    target = torch.einsum("nchpwq->nhwpqc", x.reshape(n, 1, grid[0], P, grid[1], P)).reshape(n, length, P * P)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    return loss, pred, mask


@pytest.mark.parametrize("local", [True, False])
def test_audiomae_checkpoint_loads_and_forward_matches_the_reference(tmp_path, local):
    sd = audiomae_state(local)
    path = tmp_path / "audiomae.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    model = load_audiomae(path, num_heads=HEADS, num_mel_bins=FREQ).eval()
    assert model.config["model"]["decoder"] == ("local" if local else "global")
    assert model.tokenizer.grid == (T // P, FREQ // P)
    x = torch.randn(2, 1, T, FREQ, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(2, (T // P) * (FREQ // P), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss, pred, mask = model(x, noise=noise)
        ref_loss, ref_pred, ref_mask = reference_forward(sd, x, noise, local=local)
    assert torch.equal(mask, ref_mask)
    # measured: at most 1.4e-6 with the local decoder, 0 with the global one
    assert torch.allclose(pred, ref_pred, atol=1e-5), (pred - ref_pred).abs().max()
    assert torch.allclose(loss, ref_loss, atol=1e-5)


def test_audiomae_interop_names_missing_and_unexpected_keys_and_checks_tables():
    sd = audiomae_state(local=True)
    del sd["decoder_blocks.1.attn.tau"]
    sd["head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"decoder\.blocks\.1\.attn\.tau.*head\.weight"):
        load_audiomae(sd, num_heads=HEADS, num_mel_bins=FREQ)
    sd = audiomae_state(local=False)
    sd["pos_embed"] = sd["pos_embed"].flip(1)  # a table in another orientation / order
    with pytest.raises(CheckpointError, match="encoder position table differs"):
        load_audiomae(sd, num_heads=HEADS, num_mel_bins=FREQ)
    encoder_only = {k: v for k, v in audiomae_state(local=False).items() if not k.startswith(("decoder", "mask"))}
    model = load_audiomae(encoder_only, num_heads=HEADS, num_mel_bins=FREQ)
    assert model.decoder is None and model.encode(torch.zeros(1, 1, T, FREQ)).shape == (1, 1 + 32, D)
    with pytest.raises(CheckpointError, match="not an AudioMAE checkpoint"):
        load_audiomae({"cls_token": torch.zeros(1), "patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)})


def test_audiomae_vit_base_config_builds_the_reference_architecture():
    cfg = load_config("audiomae_vit_base")
    m, o, t = cfg.model, cfg.optim, cfg.train
    assert (m.mask_ratio, m.norm_pix_loss, m.decoder, m.decoder_depth, m.decoder_embed_dim) == (
        0.8,
        True,
        "local",
        16,
        512,
    )
    assert m.decoder_options == {"window_size": [4, 4], "shift_size": [2, 0]}
    assert (o.blr, o.weight_decay, o.warmup_epochs, tuple(o.betas)) == (2e-4, 1e-4, 3, (0.9, 0.95))
    assert (t.epochs, t.batch_size * t.accum_iter) == (33, 512)
    assert (cfg.data.mean, cfg.data.std) == (-4.2677393, 4.5689974)
    model = build_model(m, with_decoder=True)
    assert model.tokenizer.grid == (64, 8)
    assert [b.shift for b in model.decoder.blocks[:2]] == [(0, 0), (2, 0)]
    encoder_params = sum(p.numel() for p in model.encoder.parameters()) + sum(
        p.numel() for p in model.tokenizer.parameters()
    )
    assert math.isclose(encoder_params / 1e6, 85.6, abs_tol=0.5)  # ViT-B/16 on one channel


def test_masking_options_set_the_official_mask_2d_probabilities_from_a_config():
    """``model.masking_options`` reaches the registered ``time_frequency`` strategy: the official ``mask_2d``
    defaults (0.7 time, 0.3 frequency) give its draw, whatever ``mask_ratio`` says."""
    from anymae.core.build.models import build_model
    from anymae.core.config import resolve_model_config

    cfg = resolve_model_config(
        {"modality": "audio", "tokenizer": {"target_length": 128, "num_mel_bins": 64}, "embed_dim": 32, "depth": 1,
         "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2,
         "masking": "time_frequency", "masking_options": {"mask_t_prob": 0.7, "mask_f_prob": 0.3}}
    )  # fmt: skip
    model = build_model(cfg)
    noise, len_keep = model.masking(
        batch=2, grid=(8, 4), mask_ratio=0.8, device="cpu", generator=torch.Generator().manual_seed(1)
    )
    expected = time_frequency_masking(mask_t_prob=0.7, mask_f_prob=0.3)(
        batch=2, grid=(8, 4), mask_ratio=0.8, device="cpu", generator=torch.Generator().manual_seed(1)
    )
    assert len_keep == expected[1] == int(8 * 0.3) * int(4 * 0.7) and torch.equal(noise, expected[0])


@pytest.mark.parametrize(
    ("grid", "window", "shift"), [((4, 6), (2, 3), (1, 0)), ((4, 6), (2, 3), (1, 2)), ((8, 4), (4, 4), (2, 0))]
)
def test_shift_attention_mask_equals_a_hand_built_mask(grid, window, shift):
    """After rolling the grid by -shift, two tokens of one window may attend to each other only if they were
    neighbours before the roll (no wrap-around between them): built here from original coordinates alone."""
    (h, w), (wh, ww) = grid, window
    expected = torch.zeros(h // wh * (w // ww), wh * ww, wh * ww)
    for wi in range(h // wh):
        for wj in range(w // ww):
            cells = [(wi * wh + a, wj * ww + b) for a in range(wh) for b in range(ww)]  # rolled coordinates
            original = [((r + shift[0]) % h, (c + shift[1]) % w) for r, c in cells]
            for i, (r1, c1) in enumerate(original):
                for j, (r2, c2) in enumerate(original):
                    if abs(r1 - r2) >= wh or abs(c1 - c2) >= ww:
                        expected[wi * (w // ww) + wj, i, j] = -100.0
    assert torch.equal(shift_attention_mask(grid, window, shift), expected)
    assert shift_attention_mask(grid, window, (0, 0)) is None


def test_a_masked_pair_does_not_see_each_other_in_the_shifted_block():
    """Through a whole shifted block: changing one token changes exactly the tokens that share an unmasked
    window with it (and itself), nothing across the wrap-around."""
    torch.manual_seed(0)
    grid, window, shift = (4, 4), (2, 2), (1, 0)
    block = SwinBlock(dim=8, num_heads=2, grid=grid, window=window, shift=shift, mlp_ratio=2.0, qkv_bias=True,
                      norm_layer=LN).eval()  # fmt: skip
    x = torch.randn(1, 16, 8)
    y = x.clone()
    y[0, 0] += 1.0  # token (0, 0): after the roll by -1 it sits in the last window row with original row 3
    changed = (block(x) - block(y)).abs().sum(-1)[0] > 1e-6  # (16,)
    # Original row 0 tokens share the last rolled window row with original row 3, but are masked from it: (0, 0)
    # only reaches (0, 1) (same window, same region) and itself.
    assert changed.nonzero().flatten().tolist() == [0, 1]
