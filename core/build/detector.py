"""A Mask R-CNN on a pre-trained MAE encoder (the MAE paper's COCO transfer, Table 4, with ViTDet's recipe).

The encoder is rebuilt from the checkpoint's config with drop path and its weights copied in (the decoder is
dropped); the tokenizer keeps its pre-training input size, and images of any size are tokenized tile by tile
(:func:`~anymae.core.model.detection.tokens_any_size`) with the position table resampled to their grid. The
detector is :func:`~anymae.core.model.detection.build_mask_rcnn` (torchvision's RPN, RoI heads and transform) on
the ``fpn4`` or ``simple_pyramid`` backbone. Its config (``model``, ``detector``, ``categories``, ``data``) is
kept with it, so a checkpoint rebuilds it alone (:func:`assemble_detector`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import LayerNorm2d
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from anymae.core.build.adapt import make_pos_embed_learned, transfer_weights
from anymae.core.build.classifier import layer_id
from anymae.core.build.models import build_encoder, set_fused_attn
from anymae.core.config import config_to_dict, resolve_model_config
from anymae.core.model.detection import build_mask_rcnn
from anymae.core.model.mae import MaskedAutoencoder
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["DETECTOR_FORMAT", "Detector", "assemble_detector", "build_detector", "param_groups_detector"]

DETECTOR_FORMAT = "anymae-detector"  # the "format" of anymae detect's checkpoints
_TRUNK = re.compile(r"^rcnn\.backbone\.(tokenizer|encoder)\.")


class Detector(nn.Module):
    """torchvision's ``MaskRCNN`` (``rcnn``) and the config it was built from.

    Training: ``(images, targets)`` -> the loss dict (``loss_classifier``, ``loss_box_reg``, ``loss_mask``,
    ``loss_objectness``, ``loss_rpn_box_reg``); eval: ``images`` -> one dict per image (``boxes``, ``labels``,
    ``scores``, ``masks``) in its own pixels. Images: a list of (C, H, W) in [0, 1], any sizes."""

    def __init__(self, rcnn: nn.Module, *, depth: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.rcnn = rcnn
        self.depth = depth  # encoder blocks: the layer-decay ids count from it
        self.config: dict[str, Any] = config

    @property
    def encoder(self) -> nn.Module:
        """The backbone's ViT encoder (the trainer's ``train.compile`` compiles its blocks)."""
        return self.rcnn.backbone.encoder

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        return self.rcnn(images, targets)


def _light_heads(spec: dict[str, Any]) -> dict[str, nn.Module]:
    """The box and mask heads of ``spec`` when they differ from ViTDet's (4 convs + fc 1024, 4 convs, width 256);
    empty for ViTDet's own, which :func:`build_mask_rcnn` builds."""
    width, out = spec["head_channels"], spec["out_channels"]
    if (width, spec["box_convs"], spec["box_fc"], spec["mask_convs"]) == (256, 4, 1024, 4):
        return {}
    return {
        "box_head": FastRCNNConvFCHead((out, 7, 7), [width] * spec["box_convs"], [spec["box_fc"]],
                                       norm_layer=LayerNorm2d),
        "mask_head": MaskRCNNHeads(out, [width] * spec["mask_convs"], 1, norm_layer=LayerNorm2d),
    }  # fmt: skip


def assemble_detector(
    model_cfg: Any, spec: dict[str, Any], registry: Registry
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(tokenizer, encoder, MaskRCNN) of ``spec`` (the ``detector`` config) on a fresh encoder of ``model_cfg``."""
    tokenizer, encoder = build_encoder(model_cfg, registry=registry, drop_path_rate=spec["drop_path"])
    if spec["learned_pos_embed"]:
        make_pos_embed_learned(encoder)
    set_fused_attn(encoder, model_cfg.fused_attn)
    global_blocks = spec["global_blocks"]
    rcnn = build_mask_rcnn(
        encoder, tokenizer, backbone=spec["backbone"], num_classes=spec["num_classes"],
        patch_size=tokenizer.patch_size, min_size=tuple(spec["min_size"]), max_size=spec["max_size"],
        image_mean=spec["mean"], image_std=spec["std"], window=spec["window"],
        global_blocks=None if global_blocks is None else list(global_blocks), out_channels=spec["out_channels"],
        **_light_heads(spec), **spec["detector_options"],
    )  # fmt: skip
    if _light_heads(spec):  # torchvision sizes its predictors for ViTDet's widths (fc 1024, mask convs 256)
        classes = spec["num_classes"] + 1
        rcnn.roi_heads.box_predictor = FastRCNNPredictor(spec["box_fc"], classes)
        rcnn.roi_heads.mask_predictor = MaskRCNNPredictor(spec["head_channels"], spec["head_channels"], classes)
    # Neither backbone reads the encoder's final norm (block outputs before it, as ViTDet's and BEiT's).
    encoder.norm = nn.Identity()
    return tokenizer, encoder, rcnn


def build_detector(
    pretrained: MaskedAutoencoder,
    *,
    backbone: str,
    categories: Sequence[dict[str, Any]],
    min_size: int | Sequence[int],
    max_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    window: int = 0,
    global_blocks: Sequence[int] | None = None,
    drop_path: float = 0.0,
    out_channels: int = 256,
    head_channels: int = 256,
    box_convs: int = 4,
    box_fc: int = 1024,
    mask_convs: int = 4,
    detector_options: dict[str, Any] | None = None,
    registry: Registry | None = None,
) -> Detector:
    """A :class:`Detector` for the COCO ``categories`` (label k is ``categories[k - 1]``) whose tokenizer and
    encoder weights are ``pretrained``'s."""
    registry = resolve_registry(registry)
    model_cfg = resolve_model_config(copy.deepcopy(pretrained.config["model"]), registry)
    spec = {
        "backbone": backbone, "num_classes": len(categories),
        "min_size": [min_size] if isinstance(min_size, int) else list(min_size), "max_size": max_size,
        "mean": list(mean), "std": list(std), "window": window,
        "global_blocks": None if global_blocks is None else list(global_blocks), "drop_path": drop_path,
        "out_channels": out_channels, "head_channels": head_channels, "box_convs": box_convs, "box_fc": box_fc,
        "mask_convs": mask_convs, "detector_options": dict(detector_options or {}),
        "learned_pos_embed": isinstance(pretrained.encoder.pos_embed, nn.Parameter),
    }  # fmt: skip
    tokenizer, encoder, rcnn = assemble_detector(model_cfg, spec, registry)
    report = transfer_weights(
        pretrained, nn.ModuleDict({"tokenizer": tokenizer, "encoder": encoder}), source_name="the pre-trained model",
        drop=("decoder.", "encoder.norm."),
    )  # fmt: skip
    if report.changed and _is_main_process():
        print("detector from the pre-trained model: " + "; ".join(report.lines()[1:]), flush=True)
    config = {"model": config_to_dict(model_cfg), "detector": spec, "categories": [dict(c) for c in categories]}
    return Detector(rcnn, depth=model_cfg.depth, config=config)


def param_groups_detector(model: Detector, *, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of ViTDet (detectron2 ``get_vit_lr_decay_rate``): the patch embedding and position table layer
    0, block i layer i + 1, the pyramid and heads depth + 1, each with ``lr_scale = layer_decay ** (depth + 1 -
    layer_id)``; no weight decay for 1-D parameters (norms, biases), the position table and the CLS token
    (ViTDet: ``weight_decay_norm = 0``, ``pos_embed`` without weight decay)."""
    depth = model.depth
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        trunk = _TRUNK.match(name)
        inner = name[len("rcnn.backbone.") :] if trunk else ""
        lid = layer_id(inner, depth) if trunk else depth + 1
        decay = not (param.ndim == 1 or inner in ("encoder.pos_embed", "encoder.cls_token"))
        group = groups.setdefault((lid, decay), {"params": [], "names": [], "weight_decay": weight_decay if decay
                                                 else 0.0, "lr_scale": layer_decay ** (depth + 1 - lid)})  # fmt: skip
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def _is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
