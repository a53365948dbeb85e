"""Configs are data: YAML validated into typed dataclasses, with ``key.sub=value`` overrides.

The core sections (``model``, ``optim``, ``train``) are dataclasses (:mod:`.schema`, :mod:`.classify`); the
modality-specific sections (``model.tokenizer`` and ``data``) are validated against the dataclasses the modality
declares (:mod:`.resolve`). Every mistake is reported before any work starts, naming the key and, for typos, the
closest valid key (:mod:`.validate`). Sources and overrides: :mod:`.sources`; the front door: :mod:`.load`.
"""

from anymae.core.config.classify import ClassifyConfig, ClassifyOptimConfig, FinetuneConfig, LinprobeConfig
from anymae.core.config.errors import ConfigError
from anymae.core.config.load import load_classify_config, load_config, load_pretrain_config
from anymae.core.config.options import check_decoder_options, check_masking_options
from anymae.core.config.refuse import refuse_unsupported
from anymae.core.config.resolve import resolve_config, resolve_model_config, resolve_part_data
from anymae.core.config.schema import Config, ModelConfig, OptimConfig, PartConfig, TrainConfig
from anymae.core.config.segment import (
    SegmentationDataConfig,
    SegmentConfig,
    SegmentHeadConfig,
    SegmentOptimConfig,
    load_segment_config,
)
from anymae.core.config.serialize import config_to_dict
from anymae.core.config.sources import (
    apply_overrides,
    apply_preset,
    bundled_configs,
    data_with_overrides,
    read_config_source,
)
from anymae.core.config.validate import from_dict
from anymae.plugins.manager import COMPOSITE

__all__ = [
    "COMPOSITE",
    "ClassifyConfig",
    "ClassifyOptimConfig",
    "Config",
    "ConfigError",
    "FinetuneConfig",
    "LinprobeConfig",
    "ModelConfig",
    "OptimConfig",
    "PartConfig",
    "SegmentConfig",
    "SegmentHeadConfig",
    "SegmentOptimConfig",
    "SegmentationDataConfig",
    "TrainConfig",
    "apply_overrides",
    "apply_preset",
    "bundled_configs",
    "check_decoder_options",
    "check_masking_options",
    "config_to_dict",
    "data_with_overrides",
    "from_dict",
    "load_classify_config",
    "load_config",
    "load_pretrain_config",
    "load_segment_config",
    "read_config_source",
    "refuse_unsupported",
    "resolve_config",
    "resolve_model_config",
    "resolve_part_data",
]
