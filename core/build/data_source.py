"""Which modality reads a model's data, and the labelled splits that fine-tuning, linear probing, k-NN and
evaluation read: one function each, so that every command makes the same choice.

A model over one modality reads its data through that registered :class:`~anymae.core.model.modality.Modality`;
a composite (``model.modality: composite``) through :class:`CompositeModality`, each part's modality over its
own ``data.<part>`` section with the part's own tokenizer config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from anymae.core.build.composite_data import CompositeModality
from anymae.core.build.shard_source import split_dataset
from anymae.core.config import ModelConfig, config_to_dict, from_dict
from anymae.plugins.manager import COMPOSITE, Registry

__all__ = ["DataModality", "LabelledData", "labelled_data", "modality_for"]


class DataModality(Protocol):
    """The data side of a model, what the commands ask of it: a registered modality or a composite's parts."""

    name: str

    def build_dataset(self, data: Any, tokenizer: Any, *, split: str) -> Dataset | None: ...

    def build_labelled_dataset(
        self, data: Any, tokenizer: Any, *, split: str, augment: dict[str, Any] | None, crop_pct: float = 0.875
    ) -> Dataset: ...

    def device_transform(self, data: Any, tokenizer: Any, *, device: torch.device) -> Any: ...


def modality_for(model: ModelConfig, *, registry: Registry, parts: Sequence[str] | None = None) -> DataModality:
    """The modality that reads ``model``'s data: the registered one, or for a composite the modalities of
    ``parts`` (default: every part, in the model's part order)."""
    if model.modality != COMPOSITE:
        return registry.modality(model.modality)
    names = list(parts or model.parts)
    unknown = [name for name in names if name not in model.parts]
    if unknown:
        raise KeyError(f"parts {unknown} are not parts of the model: {', '.join(model.parts)}")
    return CompositeModality({name: model.parts[name] for name in names}, registry=registry)


@dataclass(frozen=True)
class LabelledData:
    """A model's labelled data: the modality that reads it, its data section(s) and the tokenizer config the
    inputs are made for (``None`` for a composite: each part's is in ``model.parts``)."""

    modality: DataModality
    data: Any
    tokenizer: Any

    def split(self, split: str, *, augment: dict[str, Any] | None = None, crop_pct: float = 0.875) -> Dataset:
        """Split ``split`` ("train" or "heldout") as ``(input, label)`` items: the training augmentation
        ``augment`` (see :meth:`~anymae.core.model.modality.Modality.build_labelled_dataset`), or with ``None``
        the evaluation transform with its resize-then-centre-crop ratio ``crop_pct``. A split the data section
        reads from shards is streamed for training (with ``augment``), else read once in order."""
        return split_dataset(self.modality, self.data, self.tokenizer, split=split, labelled=True, augment=augment,
                             crop_pct=crop_pct, training=split == "train" and augment is not None)  # fmt: skip


def labelled_data(
    model: ModelConfig,
    data: Any,
    *,
    registry: Registry,
    parts: Sequence[str] | None = None,
    tokenizer_overrides: dict[str, Any] | None = None,
) -> LabelledData:
    """The labelled data of a validated ``model`` config over the validated ``data`` section(s): its
    :func:`modality_for` (``parts`` of a composite), and the model's tokenizer config with
    ``tokenizer_overrides`` (e.g. ``finetune.tokenizer``: another input size) validated against the modality's
    ``tokenizer_config``."""
    modality = modality_for(model, registry=registry, parts=parts)
    if model.modality == COMPOSITE:
        return LabelledData(modality, data, None)
    tokenizer = model.tokenizer
    if tokenizer_overrides:
        raw = {**config_to_dict(tokenizer), **tokenizer_overrides}
        tokenizer = from_dict(registry.modality(model.modality).tokenizer_config, raw, "model.tokenizer")
    return LabelledData(modality, data, tokenizer)
