"""A pre-trained MAE encoder as the backbone of torchvision's Mask R-CNN: images in, a 5-level pyramid out.

Each backbone is its tokenizer + encoder (:mod:`~anymae.core.model.detection.trunk`) and a neck
(:mod:`~anymae.core.model.detection.necks`); it has ``out_channels`` as torchvision's ``GeneralizedRCNN`` requires
and takes the batch that ``GeneralizedRCNNTransform`` made (normalised, padded to a multiple of 32): images
(N, C, H, W) of any size divisible by the patch, the position table resampled to their token grid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from anymae.core.model.detection.necks import FPN4Neck, SimplePyramidNeck
from anymae.core.model.detection.trunk import quarter_blocks, run_windowed, tokens_any_size
from anymae.core.model.encoder import MaskedEncoder
from anymae.core.model.features import block_features
from anymae.core.model.tokenizer import TokenEmbedder

__all__ = ["BACKBONES", "DetectionBackbone", "FPN4Backbone", "SimplePyramidBackbone"]


class DetectionBackbone(nn.Module, ABC):
    """images (N, C, H, W) -> OrderedDict ``"0"``-``"3"``, ``"pool"`` of (N, ``out_channels``, H/s, W/s),
    s = 4, 8, 16, 32, 64. ``pos_grid``: the grid the encoder's position table was built for (default the
    tokenizer's)."""

    out_channels: int

    def __init__(
        self, *, tokenizer: TokenEmbedder, encoder: MaskedEncoder, patch_size: int, pos_grid: tuple[int, int] | None
    ) -> None:
        super().__init__()
        self.tokenizer, self.encoder, self.patch_size = tokenizer, encoder, patch_size
        grid = tuple(pos_grid or tokenizer.grid)
        if len(grid) != 2:
            raise ValueError(f"detection needs a 2-D token grid, got {grid}")
        self.pos_grid: tuple[int, int] = (grid[0], grid[1])

    def tokens(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """images (N, C, H, W) -> (tokens (N, L, D) without positions, grid (H/p, W/p))."""
        return tokens_any_size(self.tokenizer, images, self.patch_size)

    @abstractmethod
    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """images (N, C, H, W) -> the 5 pyramid maps."""


class FPN4Backbone(DetectionBackbone):
    """The MAE paper's A.3 backbone: the outputs of the last block of each quarter of the encoder (blocks 2, 5, 8,
    11 of ViT-B), read with the CLS token as the segmentation features, -> :class:`FPN4Neck`."""

    def __init__(
        self,
        *,
        tokenizer: TokenEmbedder,
        encoder: MaskedEncoder,
        patch_size: int,
        pos_grid: tuple[int, int] | None = None,
        out_channels: int = 256,
    ) -> None:
        super().__init__(tokenizer=tokenizer, encoder=encoder, patch_size=patch_size, pos_grid=pos_grid)
        self.blocks = quarter_blocks(len(encoder.blocks))
        self.neck = FPN4Neck(dim=encoder.embed_dim, patch_size=patch_size, out_channels=out_channels)
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        tokens, grid = self.tokens(images)
        features = block_features(self.encoder, tokens, self.blocks, grid=grid, pos_grid=self.pos_grid)
        return self.neck(features)  # 4 maps (N, D, H', W') -> the pyramid


class SimplePyramidBackbone(DetectionBackbone):
    """ViTDet's backbone: the last block's map without the CLS token -> :class:`SimplePyramidNeck`.

    ``window`` > 0: every block except ``global_blocks`` (default: the last of each quarter, ViTDet's 2, 5, 8, 11
    for ViT-B) attends within ``window`` x ``window`` windows of the token grid (ViTDet: 14)."""

    def __init__(
        self,
        *,
        tokenizer: TokenEmbedder,
        encoder: MaskedEncoder,
        patch_size: int,
        pos_grid: tuple[int, int] | None = None,
        out_channels: int = 256,
        window: int = 0,
        global_blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__(tokenizer=tokenizer, encoder=encoder, patch_size=patch_size, pos_grid=pos_grid)
        self.window = window
        self.global_blocks = list(quarter_blocks(len(encoder.blocks)) if global_blocks is None else global_blocks)
        self.neck = SimplePyramidNeck(dim=encoder.embed_dim, patch_size=patch_size, out_channels=out_channels)
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        tokens, grid = self.tokens(images)
        last = run_windowed(
            self.encoder, tokens, grid=grid, pos_grid=self.pos_grid, window=self.window,
            global_blocks=self.global_blocks,
        )  # fmt: skip
        return self.neck(last)  # (N, D, H', W') -> the pyramid


BACKBONES: dict[str, type[DetectionBackbone]] = {"fpn4": FPN4Backbone, "simple_pyramid": SimplePyramidBackbone}
