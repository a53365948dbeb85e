"""anymae's built-in, modality-free plugin: the paper's random masking, pixel and norm-pix targets and
the global MAE decoder.

Registered through the ``anymae`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from anymae.core.decoder import MaskedDecoder
from anymae.core.masking import random_masking
from anymae.core.targets import NormPixTarget, PixelTarget

from .manager import hookimpl


@hookimpl
def anymae_register_masking(register: Callable[[str, Any], None]) -> None:
    register("random", random_masking)


@hookimpl
def anymae_register_targets(register: Callable[[str, Any], None]) -> None:
    register("pixels", PixelTarget())
    register("norm_pix", NormPixTarget())


def global_decoder(
    *,
    in_dim: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float,
    qkv_bias: bool,
    out_dim: int,
    pos_table: Tensor,
    norm_layer: Callable[[int], nn.Module],
    grid: tuple[int, ...],
    num_prefix: int,
) -> MaskedDecoder:
    """The paper's decoder (no options): every token attends to every other, so ``grid`` is not used."""
    return MaskedDecoder(
        in_dim=in_dim,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias,
        out_dim=out_dim,
        pos_table=pos_table,
        norm_layer=norm_layer,
        num_prefix=num_prefix,
    )


@hookimpl
def anymae_register_decoders(register: Callable[[str, Any], None]) -> None:
    register("global", global_decoder)
