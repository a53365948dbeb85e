"""The build room: a resolved config becomes objects. The one place config values turn into constructor
keyword arguments: the MAE (single or composite), the classifier on its encoder, the composite modality
that reads each part's data, the data sources beside folders (tar shards, Hugging Face datasets, ``anymae pack``),
and the weight surgery (channels, input size, patch size) between models.
Floor 3: it may import :mod:`anymae.core.config` and the rooms below it (model, data, io).
"""

from anymae.core.build.classifier import Classifier, build_classifier
from anymae.core.build.models import build_encoder, build_model

__all__ = ["Classifier", "build_classifier", "build_encoder", "build_model"]
