"""anymae.core: the modality-agnostic MAE. It never imports a modality; it meets them through the
:class:`Tokenizer`/:class:`Modality` interfaces and the plugin registry."""

from anymae.core.build.models import build_model
from anymae.core.config import Config, ConfigError, ModelConfig, OptimConfig, TrainConfig, load_config
from anymae.core.data.samples import BadSampleError, DataError, SafeDataset
from anymae.core.io.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from anymae.core.model.composite import MultiModalMAE
from anymae.core.model.decoder import MaskedDecoder
from anymae.core.model.encoder import MaskedEncoder
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.model.masking import MaskingStrategy, random_masking
from anymae.core.model.modality import Modality
from anymae.core.model.tokenizer import Tokenizer
from anymae.core.train.run import NonFiniteLossError, PreemptedError
from anymae.core.train.task_classify import ClassifyResult, train_classifier
from anymae.core.train.task_pretrain import PretrainResult, pretrain
from anymae.core.weights.loading import load_model

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
