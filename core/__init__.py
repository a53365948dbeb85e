"""anymae.core: the modality-agnostic MAE. It never imports a modality; it meets them through the
:class:`Tokenizer`/:class:`Modality` interfaces and the plugin registry."""

from .build import build_model
from .checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from .composite import MultiModalMAE
from .config import Config, ConfigError, ModelConfig, OptimConfig, TrainConfig, load_config
from .data import BadSampleError, DataError, SafeDataset
from .decoder import MaskedDecoder
from .encoder import MaskedEncoder
from .loading import load_model
from .masking import MaskingStrategy, random_masking
from .modality import Modality
from .model import MaskedAutoencoder
from .run import NonFiniteLossError, PreemptedError
from .task_classify import ClassifyResult, train_classifier
from .task_pretrain import PretrainResult, pretrain
from .tokenizer import Tokenizer

__all__ = [
    "BadSampleError",
    "CheckpointError",
    "ClassifyResult",
    "Config",
    "ConfigError",
    "DataError",
    "MaskedAutoencoder",
    "MaskedDecoder",
    "MaskedEncoder",
    "MaskingStrategy",
    "Modality",
    "ModelConfig",
    "MultiModalMAE",
    "NonFiniteLossError",
    "OptimConfig",
    "PreemptedError",
    "PretrainResult",
    "SafeDataset",
    "Tokenizer",
    "TrainConfig",
    "build_model",
    "load_config",
    "load_model",
    "pretrain",
    "random_masking",
    "read_checkpoint",
    "train_classifier",
    "write_checkpoint",
]
