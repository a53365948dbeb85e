"""anymae's built-in, modality-free plugin: the paper's random masking, pixel and norm-pix targets, the
global MAE decoder and the linear and UperNet segmentation heads.

Registered through the ``anymae`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Unpack

from anymae.core.model.decoder import DecoderArgs, MaskedDecoder
from anymae.core.model.heads import LinearHead, UperNetHead
from anymae.core.model.masking import random_masking
from anymae.core.model.targets import NormPixTarget, PixelTarget

from .manager import hookimpl


@hookimpl
def anymae_register_masking(register: Callable[[str, Any], None]) -> None:
    register("random", random_masking)


@hookimpl
def anymae_register_targets(register: Callable[[str, Any], None]) -> None:
    register("pixels", PixelTarget())
    register("norm_pix", NormPixTarget())


def global_decoder(**args: Unpack[DecoderArgs]) -> MaskedDecoder:
    """The paper's decoder (no options): every token attends to every other, so ``grid`` is not used."""
    return MaskedDecoder(**args)


@hookimpl
def anymae_register_decoders(register: Callable[[str, Any], None]) -> None:
    register("global", global_decoder)


@hookimpl
def anymae_register_segmentation_heads(register: Callable[[str, Any], None]) -> None:
    register("linear", LinearHead)
    register("upernet", UperNetHead)
