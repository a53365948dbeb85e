"""The weights room: any checkpoint anymae reads becomes a model. The checkpoint-format kit a modality uses to
register official / timm / Hugging Face layouts, the one front door :func:`load_model`, ``anymae convert``
and ``model.init_from``. Floor 4: it may import build, config and the rooms below.
"""

from anymae.core.weights.formats import CheckpointFormat, LoadOptions
from anymae.core.weights.loading import load_any, load_classifier_file, load_model

__all__ = ["CheckpointFormat", "LoadOptions", "load_any", "load_classifier_file", "load_model"]
