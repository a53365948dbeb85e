"""The released MAE-family weights anymae reads by hub name (``anymae models``).

Each entry was checked against its publisher's model card on huggingface.co (name, architecture, what the files
hold). Only layouts a registered checkpoint format reads are listed: transformers ViTMAE (image plugin's
``hf-vitmae``), timm ViT (``official-mae`` / timm state dicts) and transformers VideoMAE pre-training folders
(video plugin's ``videomae``). AudioMAE's weights are published as ``.pth`` files outside the hub; read them
from a file. Fine-tuned VideoMAE folders (``VideoMAEForVideoClassification``) are not read yet.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RELEASED", "Released", "released"]


@dataclass(frozen=True)
class Released:
    """One released checkpoint: ``hf-hub:<name>`` loads it."""

    name: str  # ORG/NAME on the Hugging Face hub
    modality: str  # the anymae modality its model belongs to
    size: str  # ViT size and patch, e.g. "ViT-B/16"
    contents: str  # "encoder + decoder" (pre-training, reconstructs) | "encoder" (features only)
    layout: str  # the file layout, which the checkpoint formats detect
    source: str  # who trained it, on what

    @property
    def hub_name(self) -> str:
        return f"hf-hub:{self.name}"


_MAE = "MAE (He et al. 2022), ImageNet-1k: the official mae_visualize weights (pixel target)"
_MAE_TIMM = "MAE (He et al. 2022), ImageNet-1k, 1600 epochs: the official mae_pretrain weights (timm's copy)"
_VIDEOMAE = "VideoMAE (Tong et al. 2022)"

RELEASED: tuple[Released, ...] = (
    Released("facebook/vit-mae-base", "image", "ViT-B/16", "encoder + decoder", "transformers ViTMAE", _MAE),
    Released("facebook/vit-mae-large", "image", "ViT-L/16", "encoder + decoder", "transformers ViTMAE", _MAE),
    Released("facebook/vit-mae-huge", "image", "ViT-H/14", "encoder + decoder", "transformers ViTMAE", _MAE),
    Released("timm/vit_base_patch16_224.mae", "image", "ViT-B/16", "encoder", "timm ViT", _MAE_TIMM),
    Released("timm/vit_large_patch16_224.mae", "image", "ViT-L/16", "encoder", "timm ViT", _MAE_TIMM),
    Released("timm/vit_huge_patch14_224.mae", "image", "ViT-H/14", "encoder", "timm ViT", _MAE_TIMM),
    Released(
        "MCG-NJU/videomae-base",
        "video",
        "ViT-B/16, 16 frames",
        "encoder + decoder",
        "transformers VideoMAE",
        _VIDEOMAE + ", Kinetics-400, 1600 epochs",
    ),
    Released(
        "MCG-NJU/videomae-base-short",
        "video",
        "ViT-B/16, 16 frames",
        "encoder + decoder",
        "transformers VideoMAE",
        _VIDEOMAE + ", Kinetics-400, 800 epochs",
    ),
    Released(
        "MCG-NJU/videomae-large",
        "video",
        "ViT-L/16, 16 frames",
        "encoder + decoder",
        "transformers VideoMAE",
        _VIDEOMAE + ", Kinetics-400, 1600 epochs",
    ),
    Released(
        "MCG-NJU/videomae-base-ssv2",
        "video",
        "ViT-B/16, 16 frames",
        "encoder + decoder",
        "transformers VideoMAE",
        _VIDEOMAE + ", Something-Something v2, 2400 epochs",
    ),
    Released(
        "MCG-NJU/videomae-base-short-ssv2",
        "video",
        "ViT-B/16, 16 frames",
        "encoder + decoder",
        "transformers VideoMAE",
        _VIDEOMAE + ", Something-Something v2, 800 epochs",
    ),
)


def released(modality: str | None = None) -> list[Released]:
    """The released weights, optionally of one modality."""
    return [r for r in RELEASED if modality is None or r.modality == modality]
