"""A segmenter on a pre-trained MAE encoder: tokenizer -> encoder blocks -> dense head (the MAE paper's ADE20K
transfer, appendix A.4, following BEiT's semantic segmentation code).

The encoder is rebuilt from the checkpoint's config for the training crop (a new token grid: anymae's fixed
sin-cos table is recomputed for it, a learned one resampled by :func:`~anymae.core.build.adapt.transfer_weights`),
with drop path, and its weights are copied in; the decoder is dropped. The head reads the outputs of chosen
blocks as 2-D maps (:func:`~anymae.core.model.features.block_features`: no CLS, before the final norm, so the final
norm and any block after the deepest chosen one are removed). Sliding-window inference feeds it windows of exactly
the crop, so the grid never changes after building.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from anymae.core.build.adapt import make_pos_embed_learned, transfer_weights
from anymae.core.build.classifier import param_groups_layer_decay
from anymae.core.build.models import build_encoder, set_fused_attn
from anymae.core.config import config_to_dict, resolve_model_config
from anymae.core.model.encoder import MaskedEncoder
from anymae.core.model.features import block_features, evenly_spaced_blocks
from anymae.core.model.heads import SegmentationHead
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.model.tokenizer import TokenEmbedder
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["SEGMENTER_FORMAT", "Segmenter", "build_segmenter", "default_layers", "param_groups_layer_decay"]

SEGMENTER_FORMAT = "anymae-segmenter"  # the "format" of anymae segment's checkpoints


class Segmenter(nn.Module):
    """x (N, C, H, W) at the tokenizer's input size -> (logits, aux logits or None), each (N, K, H, W).

    ``layers``: the blocks (from 0) whose outputs the head reads, shallowest first."""

    def __init__(
        self,
        *,
        tokenizer: TokenEmbedder,
        encoder: MaskedEncoder,
        head: SegmentationHead,
        layers: Sequence[int],
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != head.num_maps:
            raise ValueError(f"the head reads {head.num_maps} block maps, but layers names {len(layers)}: {layers}")
        depth = len(encoder.blocks)
        if min(layers) < 0 or max(layers) >= depth or list(layers) != sorted(set(layers)):
            raise ValueError(f"layers {list(layers)} must be increasing block indices 0..{depth - 1}")
        self.tokenizer, self.encoder, self.head = tokenizer, encoder, head
        self.layers = list(layers)
        self.blocks_total = depth  # the pre-trained depth: the layer-decay ids count from it
        del self.encoder.blocks[max(layers) + 1 :]  # blocks after the deepest one read have no use here
        self.encoder.norm = nn.Identity()  # the maps are taken before the final norm (BEiT)
        self.config: dict[str, Any] = dict(config or {})

    @property
    def depth(self) -> int:
        """The backbone's depth for layer-wise lr decay (the head is layer depth + 1)."""
        return self.blocks_total

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        tokens = self.tokenizer(x)  # (N, L, D)
        maps = block_features(self.encoder, tokens, self.layers, grid=tuple(self.tokenizer.grid))  # (N, D, H', W')
        return self.head(maps)

    def predict(self, x: Tensor) -> Tensor:
        """x -> logits (N, K, H, W), the main head only (sliding-window inference calls this)."""
        return self.forward(x)[0]


def default_layers(num_maps: int, depth: int) -> list[int]:
    """The blocks a head of ``num_maps`` maps reads by default: the last for 1, BEiT's evenly spaced ones for 4."""
    if num_maps == 1:
        return [depth - 1]
    if num_maps == 4:
        return evenly_spaced_blocks(depth)
    raise ValueError(f"no default blocks for a head of {num_maps} maps: set segment.layers")


def build_segmenter(
    pretrained: MaskedAutoencoder,
    *,
    head: str,
    num_classes: int,
    crop: tuple[int, int],
    layers: Sequence[int] | None = None,
    drop_path: float = 0.0,
    head_options: dict[str, Any] | None = None,
    registry: Registry | None = None,
) -> Segmenter:
    """A :class:`Segmenter` whose tokenizer and encoder weights are ``pretrained``'s, at input size ``crop``,
    with the registered head ``head`` (its builder's ``head_options``: e.g. ``channels``, ``aux_weight``)."""
    registry = resolve_registry(registry)
    model_raw = copy.deepcopy(pretrained.config["model"])
    model_raw["tokenizer"] = {**config_to_dict(model_raw.get("tokenizer") or {}), "img_size": list(crop)}
    cfg = resolve_model_config(model_raw, registry)
    tokenizer, encoder = build_encoder(cfg, registry=registry, drop_path_rate=drop_path)
    if isinstance(pretrained.encoder.pos_embed, nn.Parameter):
        make_pos_embed_learned(encoder)
    report = transfer_weights(
        pretrained, nn.ModuleDict({"tokenizer": tokenizer, "encoder": encoder}), source_name="the pre-trained model",
        drop=("decoder.",),
    )  # fmt: skip
    if report.changed and _is_main_process():
        print("segmenter from the pre-trained model: " + "; ".join(report.lines()[1:]), flush=True)
    set_fused_attn(encoder, cfg.fused_attn)
    builder = registry.segmentation_head(head)
    dense = builder(in_channels=cfg.embed_dim, num_classes=num_classes, patch_size=tokenizer.patch_size,
                    **(head_options or {}))  # fmt: skip
    layers = list(layers) if layers is not None else default_layers(dense.num_maps, cfg.depth)
    _check_grid(dense, embed_dim=cfg.embed_dim, grid=tuple(tokenizer.grid), crop=crop, name=head)
    config = {
        "model": config_to_dict(cfg),
        "segmenter": {
            "head": head,
            "num_classes": num_classes,
            "layers": layers,
            "drop_path": drop_path,
            "head_options": dict(head_options or {}),
        },
    }
    return Segmenter(tokenizer=tokenizer, encoder=encoder, head=dense, layers=layers, config=config)


def _check_grid(
    head: SegmentationHead, *, embed_dim: int, grid: tuple[int, ...], crop: tuple[int, int], name: str
) -> None:
    """Run ``head`` once on zero maps of the crop's token grid, so that a crop too small for its coarsest level
    (UperNet's stride 32) fails here, naming the sizes, rather than in the first step."""
    maps = [torch.zeros(1, embed_dim, *grid) for _ in range(head.num_maps)]
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            head(maps)
    except RuntimeError as exc:
        raise ValueError(f"segment.crop {list(crop)} (a {grid[0]}x{grid[1]} token grid) is too small for the "
                         f"{name!r} head: {str(exc).splitlines()[0]}") from None  # fmt: skip
    finally:
        head.train(was_training)


def _is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
