"""The extra keyword arguments a config passes to a registered decoder or masking strategy
(``decoder_options``, ``masking_options``), checked against the builder's signature."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from typing import Any

from anymae.core.config.errors import ConfigError
from anymae.core.model.decoder import DecoderArgs
from anymae.core.model.masking import MaskingArgs

__all__ = ["DECODER_ARGUMENTS", "MASKING_ARGUMENTS", "check_decoder_options", "check_masking_options", "check_options"]


# What the core passes to every decoder builder; ``model.decoder_options`` may not set these.
DECODER_ARGUMENTS = tuple(DecoderArgs.__annotations__)


# What the core passes to every masking strategy; ``model.masking_options`` may not set these.
MASKING_ARGUMENTS = tuple(MaskingArgs.__annotations__)


def check_decoder_options(builder: Any, options: dict[str, Any]) -> None:
    """Fail on a ``model.decoder_options`` key the decoder builder does not take, naming the key."""
    check_options(builder, options, "model.decoder_options", "decoder", DECODER_ARGUMENTS)


def check_masking_options(strategy: Any, options: dict[str, Any]) -> None:
    """Fail on a ``model.masking_options`` key the masking strategy does not take, naming the key."""
    check_options(strategy, options, "model.masking_options", "masking strategy", MASKING_ARGUMENTS)


def _core_arguments(param: inspect.Parameter) -> bool:
    """Whether a ``**`` parameter receives only the core's arguments (``**args: Unpack[DecoderArgs]``), so that the
    builder's options are its named keywords."""
    return str(param.annotation).startswith(("Unpack[", "typing.Unpack["))


def check_options(function: Any, options: dict[str, Any], where: str, what: str, reserved: Sequence[str]) -> None:
    params = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD and not _core_arguments(p) for p in params.values()):
        accepted = None  # the function takes any keyword; it reports unknown ones itself
    else:
        accepted = [n for n, p in params.items() if n not in reserved and p.kind is not inspect.Parameter.VAR_KEYWORD]
    for key in options:
        if key in reserved:
            raise ConfigError(f"config {where}.{key}: set by the core from model.*, not an option")
        if accepted is not None and key not in accepted:
            match = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"; did you mean {match[0]!r}?" if match else ""
            raise ConfigError(
                f"unknown config key '{where}.{key}'{hint} The {what}'s options: {', '.join(accepted) or 'none'}"
            )
