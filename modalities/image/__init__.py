"""The built-in image modality plugin (entry point ``image`` in the ``anymae`` group)."""

from .modality import (
    ImageDataConfig,
    ImageModality,
    ImageTokenizerConfig,
    anymae_register_checkpoint_formats,
    anymae_register_commands,
    anymae_register_modalities,
)
from .tokenizer import PatchTokenizer2d

__all__ = [
    "ImageDataConfig",
    "ImageModality",
    "ImageTokenizerConfig",
    "PatchTokenizer2d",
    "anymae_register_checkpoint_formats",
    "anymae_register_commands",
    "anymae_register_modalities",
]
