"""AudioMAE pre-training checkpoints -> anymae audio models (reference section 5).

AudioMAE's ``models_mae.MaskedAutoencoderViT`` state dict (optionally under ``'model'``) uses the image MAE
layout with a single-channel ``patch_embed.proj.weight (D, 1, 16, 16)``, ``pos_embed (1, 1 + L, D)`` and
``decoder_pred (256, D_dec)``. Its decoder is either the global ViT decoder (``decoder_mode=0``,
``decoder_blocks.j.attn.qkv``...) or the local Swin decoder (``decoder_mode=1``, whose blocks add
``attn.tau`` and ``attn.meta_mlp.fc{1,2}``); the variant is read from the keys. The stored fixed position
tables are compared with anymae's (they must match AudioMAE's orientation, see ``tokenizer.py``), every other
tensor is loaded with a strict key check that names missing and unexpected keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from anymae.core.build.models import build_model
from anymae.core.config import resolve_model_config
from anymae.core.io.checkpoint import CheckpointError, load_state_dict_checked, read_checkpoint
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.weights.formats import (
    CheckpointFormat,
    LoadOptions,
    count_blocks,
    infer_heads,
    split_mae_vit_state,
    unwrap_state,
)
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["from_audiomae", "is_audiomae", "load_audiomae"]

# Heads are not visible in the tensors: AudioMAE's architectures (models_mae.py).
AUDIOMAE_HEADS = {384: 6, 768: 12, 1024: 16, 1280: 16}
AUDIOMAE_DECODER_HEADS = 16
AUDIOMAE_WINDOW, AUDIOMAE_SHIFT = [4, 4], [2, 0]  # its decoder_mode=1 (no_shift=False)


def is_audiomae(state: dict[str, Any]) -> bool:
    """An AudioMAE state dict: a single-channel patch embedding and a CLS token."""
    weight = state.get("patch_embed.proj.weight")
    return isinstance(weight, Tensor) and weight.ndim == 4 and weight.shape[1] == 1 and "cls_token" in state


def from_audiomae(
    state: dict[str, Tensor],
    *,
    num_mel_bins: int = 128,
    num_heads: int | None = None,
    norm_pix_loss: bool = True,
    shift_size: tuple[int, int] | list[int] = tuple(AUDIOMAE_SHIFT),
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """An AudioMAE state dict -> (``model`` config section, anymae state dict, stored fixed tables).

    ``num_mel_bins`` fixes F (128 in every AudioMAE recipe); T follows from the position table's length.
    ``shift_size`` is (0, 0) for checkpoints trained with ``--no_shift`` (invisible in the weights).
    """
    if not is_audiomae(state):
        raise CheckpointError("not an AudioMAE state dict: expected cls_token and patch_embed.proj.weight (D, 1, p, p)")
    dim, _, patch, patch_w = state["patch_embed.proj.weight"].shape
    if patch != patch_w:
        raise CheckpointError(f"patch_embed.proj.weight has a {patch}x{patch_w} kernel; square patches expected")
    if "pos_embed" not in state:
        raise CheckpointError("the checkpoint has no pos_embed: the number of time frames cannot be inferred")
    num_tokens = state["pos_embed"].shape[1] - 1
    freq_tokens = num_mel_bins // patch
    if num_mel_bins % patch or num_tokens % freq_tokens:
        raise CheckpointError(
            f"pos_embed has {num_tokens} token slots, not a multiple of {freq_tokens} frequency patches "
            f"({num_mel_bins} mel bins / patch {patch}); pass num_mel_bins="
        )
    heads = infer_heads(dim, AUDIOMAE_HEADS, num_heads)
    model: dict[str, Any] = {
        "modality": "audio",
        "tokenizer": {
            "target_length": num_tokens // freq_tokens * patch,
            "num_mel_bins": num_mel_bins,
            "patch_size": patch,
        },
        "mask_ratio": 0.8,
        "norm_pix_loss": norm_pix_loss,
        "embed_dim": dim,
        "depth": count_blocks(state, r"blocks\.(\d+)\."),
        "num_heads": heads,
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "norm_eps": 1e-6,
    }
    if "decoder_embed.weight" in state:
        dec_dim = state["decoder_embed.weight"].shape[0]
        local = "decoder_blocks.0.attn.tau" in state
        # The local decoder's heads are visible: one temperature and one relative-bias output per head.
        dec_heads = state["decoder_blocks.0.attn.tau"].numel() if local else AUDIOMAE_DECODER_HEADS
        model.update(
            decoder="local" if local else "global",
            decoder_embed_dim=dec_dim,
            decoder_depth=count_blocks(state, r"decoder_blocks\.(\d+)\."),
            decoder_num_heads=dec_heads,
            decoder_mlp_ratio=state["decoder_blocks.0.mlp.fc1.weight"].shape[0] / dec_dim,
        )
        if local:
            model["decoder_options"] = {"window_size": list(AUDIOMAE_WINDOW), "shift_size": list(shift_size)}
    converted, tables = split_mae_vit_state(state)  # AudioMAE keeps the official MAE key names
    return model, converted, {key.split(".")[0]: table for key, table in tables.items()}


def load_audiomae(
    source: str | Path | dict[str, Any],
    *,
    num_mel_bins: int = 128,
    num_heads: int | None = None,
    norm_pix_loss: bool = True,
    shift_size: tuple[int, int] | list[int] = tuple(AUDIOMAE_SHIFT),
    strict: bool = True,
    registry: Registry | None = None,
) -> MaskedAutoencoder:
    """An AudioMAE pre-training checkpoint (a ``.pth`` path, or its loaded dict) -> an anymae model.

    Encoder-only files give an encoder-only model. Missing, unexpected or mis-shaped keys raise
    :class:`CheckpointError` naming them (``strict=False`` loads the rest and warns); a stored position table
    that differs from AudioMAE's fixed sin-cos table raises.
    """
    name = str(source) if not isinstance(source, dict) else "the given state dict"
    payload = read_checkpoint(source) if not isinstance(source, dict) else source
    state = unwrap_state(payload, ("model",))
    if not isinstance(state, dict) or not is_audiomae(state):
        raise CheckpointError(
            f"{name} is not an AudioMAE checkpoint (keys cls_token, patch_embed.proj.weight (D, 1, p, p), "
            "blocks.N..., optionally under 'model')"
        )
    model_raw, converted, tables = from_audiomae(
        state, num_mel_bins=num_mel_bins, num_heads=num_heads, norm_pix_loss=norm_pix_loss, shift_size=shift_size
    )
    registry = resolve_registry(registry)
    cfg = resolve_model_config(model_raw, registry)
    with_decoder = any(k.startswith("decoder.") for k in converted)
    model = build_model(cfg, registry=registry, with_decoder=with_decoder)
    for part, stored in tables.items():
        if part == "decoder" and not with_decoder:
            continue
        width = cfg.embed_dim if part == "encoder" else cfg.decoder_embed_dim
        _check_table(f"{part} position table", stored, model.tokenizer.position_table(width), name)
    load_state_dict_checked(model, converted, source=name, strict=strict)
    return model


def _check_table(what: str, stored: Tensor, ours: Tensor, source: str) -> None:
    """``stored`` (1, 1 + L, D) with a zero CLS slot against anymae's (L, D)."""
    expected = (1, 1 + ours.shape[0], ours.shape[1])
    if tuple(stored.shape) != expected:
        raise CheckpointError(f"{source}: {what} has shape {tuple(stored.shape)}, expected {expected}")
    diff = max((stored[0, 1:].float() - ours).abs().max().item(), stored[0, 0].abs().max().item())
    if diff > 1e-4:
        raise CheckpointError(
            f"{source}: the stored {what} differs from AudioMAE's fixed 2-D sin-cos table by {diff:.3g} "
            "(a trained table, pos_trainable=True, is not supported)"
        )


class AudioMAEFormat(CheckpointFormat):
    """The ``audiomae`` checkpoint format for ``load_model``: AudioMAE pre-training ``.pth`` files (128 mel
    bins, the released window and shift). Asked before the image plugin's official-MAE format, whose layout
    AudioMAE's extends; writing AudioMAE's layout is that format's ``--to official``."""

    def detect(self, path: Path, payload: Any) -> bool:
        state = unwrap_state(payload, ("model",))
        return state is not None and is_audiomae(state)

    def load(self, path: Path, payload: Any, *, options: LoadOptions, registry: Registry) -> MaskedAutoencoder:
        """``num_heads``: the encoder's heads, for widths outside AudioMAE's own (they are not in the tensors)."""
        return load_audiomae(
            payload if payload is not None else path,
            num_heads=options.num_heads,
            norm_pix_loss=True if options.norm_pix_loss is None else options.norm_pix_loss,
            strict=options.strict,
            registry=registry,
        )
