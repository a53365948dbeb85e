"""The built-in video modality plugin (entry point ``video`` in the ``anymae`` group): VideoMAE-faithful
tubelet tokens, tube masking, per-tubelet targets and decoder, PyAV decoding and checkpoint converters."""

from .modality import (
    VideoDataConfig,
    VideoModality,
    VideoTokenizerConfig,
    anymae_register_checkpoint_formats,
    anymae_register_decoders,
    anymae_register_masking,
    anymae_register_modalities,
    anymae_register_targets,
)
from .tokenizer import TubeletTokenizer

__all__ = [
    "TubeletTokenizer",
    "VideoDataConfig",
    "VideoModality",
    "VideoTokenizerConfig",
    "anymae_register_checkpoint_formats",
    "anymae_register_decoders",
    "anymae_register_masking",
    "anymae_register_modalities",
    "anymae_register_targets",
]
