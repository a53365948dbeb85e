"""The built-in audio modality plugin (entry point ``audio`` in the ``anymae`` group): AudioMAE's recipe."""

from .classification import LabelledClips
from .decoder import LocalDecoder
from .interop import load_audiomae
from .masking import time_frequency_masking
from .modality import (
    AudioDataConfig,
    AudioModality,
    AudioTokenizerConfig,
    anymae_register_checkpoint_formats,
    anymae_register_commands,
    anymae_register_decoders,
    anymae_register_masking,
    anymae_register_modalities,
)
from .tokenizer import SpectrogramTokenizer

__all__ = [
    "AudioDataConfig",
    "AudioModality",
    "AudioTokenizerConfig",
    "LabelledClips",
    "LocalDecoder",
    "SpectrogramTokenizer",
    "anymae_register_checkpoint_formats",
    "anymae_register_commands",
    "anymae_register_decoders",
    "anymae_register_masking",
    "anymae_register_modalities",
    "load_audiomae",
    "time_frequency_masking",
]
