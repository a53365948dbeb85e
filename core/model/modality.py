"""The modality interface: what a plugin registers so that the core can train on a new kind of data."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from anymae.core.data.samples import DataError
from anymae.core.model.tokenizer import Tokenizer

__all__ = ["Modality"]


class Modality(ABC):
    """A kind of data: its config sections, tokenizer, datasets, input loader and reconstruction figure.

    ``tokenizer_config`` and ``data_config`` are dataclasses; the config loader validates the YAML
    sections ``model.tokenizer`` and ``data`` against them (unknown keys, types, ``__post_init__`` checks)
    and hands the instances to the methods below.
    """

    name: ClassVar[str]
    tokenizer_config: ClassVar[type]
    data_config: ClassVar[type]
    # ``data`` of ``anymae segment``: a subclass of anymae.core.config.segment.SegmentationDataConfig, or None when
    # the modality has no per-pixel labelled data (build_segmentation_dataset).
    segmentation_data_config: ClassVar[type | None] = None
    # ``data`` of ``anymae detect``: a subclass of anymae.core.config.detect.DetectionDataConfig, or None when the
    # modality has no COCO-format instance data (build_detection_dataset).
    detection_data_config: ClassVar[type | None] = None
    # Keys of ``data_config`` besides ``root``, ``train_split`` and ``heldout_split`` that say where a split's files
    # are (list files, a classes file): reset to their defaults when a split is read from shards, whose samples the
    # core lays out as ``root/<split>/<class>/<file>`` for the modality's own dataset to read.
    data_location_keys: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def build_tokenizer(self, config: Any, *, embed_dim: int) -> Tokenizer:
        """A tokenizer producing ``embed_dim``-wide tokens, from a ``tokenizer_config`` instance."""

    @abstractmethod
    def build_dataset(self, data: Any, tokenizer: Any, *, split: str) -> Dataset | None:
        """The pre-training dataset for ``split`` ("train" or "heldout"); items are input tensors (or
        ``(input, label)`` pairs, whose label is ignored). ``None`` when the data has no such split.
        Raise ``FileNotFoundError``/``ValueError`` naming the config key for missing or empty data."""

    @abstractmethod
    def load_inputs(self, paths: Sequence[str | Path], data: Any, tokenizer: Any) -> Tensor:
        """Files -> one model-ready batch with the evaluation transform (for ``anymae visualize``)."""

    def load_windows(
        self, path: str | Path, data: Any, tokenizer: Any, *, window: float | None = None, hop: float | None = None
    ) -> Iterator[tuple[float, Tensor]]:
        """One file -> ``(start seconds, model input)`` pairs in time order, for ``anymae embed`` (optional).

        Data with a time axis (audio, video) covers the whole file with windows of ``window`` seconds (default:
        the model's own input span) starting every ``hop`` seconds (default: ``window``); each input is what
        :meth:`load_inputs` makes of one file (without the batch axis). The default, for data without a time axis
        (images): the file as :meth:`load_inputs` reads it, one window at 0.0; ``window`` and ``hop`` are refused.
        """
        if window is not None or hop is not None:
            raise DataError(f"modality {self.name!r} has no time axis: --window and --hop do not apply to it")
        yield 0.0, self.load_inputs([path], data, tokenizer)[0]

    @abstractmethod
    def render_reconstruction(
        self,
        *,
        inputs: Tensor,
        pred: Tensor,
        mask: Tensor,
        tokenizer: Tokenizer,
        data: Any,
        path: str | Path,
        caption: str = "",
    ) -> Path:
        """Write a figure of inputs (N, ...), predictions (N, L, P) and mask (N, L) to ``path``.

        ``pred`` holds patch values: the core has already mapped it back from the target space (e.g. a
        norm-pix prediction de-normalized with each true patch's mean and std, or with ``anymae visualize
        --raw-stats`` the visible patches' average ones). ``caption`` says which: a line the figure must show
        when it is not empty (:func:`anymae.core.model.figures.add_caption` draws one under a PIL image)."""

    def device_transform(self, data: Any, tokenizer: Any, *, device: torch.device) -> Any:
        """The end of the pre-training input pipeline, run on the training device (optional; ``None``, the
        default, keeps the whole pipeline in the DataLoader workers).

        For data whose decoding the CPUs cannot keep up with (e.g. images with ``data.decode: gpu``: nvJPEG
        on CUDA). Return ``None`` when ``data`` does not ask for it; otherwise an object with
        ``collate(items) -> batch``, the DataLoader's ``collate_fn`` (it runs in the workers on
        ``SafeDataset`` items ``{"input", "bad", "mask"}``, where ``input`` is what the "train" dataset of
        :meth:`build_dataset` returns), and ``__call__(batch) -> Tensor``, the model input ``(N, ...)`` on
        ``device``, called by the training loop for each batch. A sample found unreadable there is replaced by
        another of the batch and marked ``batch["bad"][i] = 1`` so that the trainer counts it. Randomness
        belongs in the workers (drawn under the per-sample seed), so that a run stays reproducible.
        """
        return None

    def build_labelled_dataset(
        self, data: Any, tokenizer: Any, *, split: str, augment: dict[str, Any] | None, crop_pct: float = 0.875
    ) -> Dataset:
        """A labelled dataset for fine-tuning, linear probing and evaluation (optional).

        ``split`` is "train" or "heldout" (the data section's split folders); items are ``(input, label)``
        with ``label`` an int class index, and the dataset has a ``classes`` list (names, index order), the
        same for every split. ``augment`` is ``None`` for the evaluation transform (``crop_pct``: the
        resize-then-centre-crop ratio), else the training augmentation: a mapping with ``recipe``
        ("finetune" or "linprobe") and the fine-tuning options (``auto_augment``, ``reprob``, ...).

        The dataset declares its :class:`~anymae.core.data.samples.DatasetTraits` (subclass
        :class:`~anymae.core.data.samples.DatasetWithTraits`); they switch on more of the classifier loop: ``classes``,
        ``multi_label`` (labels are float ``(K,)`` multi-hot rows: BCE loss and mAP), ``num_views = V``
        (evaluation inputs ``(V, ...)``, their scores merged), ``samples_per_item = S`` (training inputs
        ``(S, ...)``, folded into the batch with the label repeated) and ``sample_weights`` (for
        ``balanced_sampling``).

        The default raises :class:`~anymae.core.data.samples.DataError`: the modality has no labelled data.
        """
        raise DataError(
            f"modality {self.name!r} does not provide labelled data (Modality.build_labelled_dataset), "
            "so it cannot be fine-tuned, linearly probed or evaluated yet"
        )

    def build_segmentation_dataset(self, data: Any, tokenizer: Any, *, split: str, train: bool) -> Dataset:
        """Inputs with one class index per pixel, for ``anymae segment`` (optional).

        ``data`` is a ``segmentation_data_config`` instance, ``tokenizer`` the segmenter's tokenizer config (its
        input size is the training crop); ``split`` is "train" or "heldout". Items are ``(input (C, H, W), mask
        (H, W) int64)`` with class indices 0..``data.num_classes - 1`` or ``data.ignore_index``. ``train``: the
        training augmentation, every item the tokenizer's input size (padded with ``ignore_index``); else the
        evaluation transform at the file's own size. A sample that cannot be used (no mask, sizes that differ, a
        class index out of range, an unreadable file) raises
        :class:`~anymae.core.data.samples.BadSampleError` naming the file.

        The default raises :class:`~anymae.core.data.samples.DataError`: the modality has no segmentation data.
        """
        raise DataError(
            f"modality {self.name!r} does not provide segmentation data (Modality.build_segmentation_dataset)"
        )

    def build_detection_dataset(
        self, data: Any, tokenizer: Any, *, split: str, augment: dict[str, Any] | None
    ) -> Dataset:
        """COCO-format instances with their inputs, for ``anymae detect`` (optional).

        ``data`` is a ``detection_data_config`` instance, ``tokenizer`` the model's tokenizer config; ``split`` is
        "train" or "heldout". Items are ``(input (C, H, W) float32, target)``, the pair torchvision's detection
        models take: the input not normalised (the model normalises with ``data.mean`` / ``data.std``); ``target``:
        ``boxes`` (K, 4) x1 y1 x2 y2 in pixels, ``labels`` (K,) int64 in 1..categories, ``masks`` (K, H, W) uint8,
        ``image_id``. ``augment``: None for the input as read, else ``{"recipe": "lsj", "size", "scale"}`` (large-
        scale jitter onto a size x size canvas) or ``{"recipe": "flip"}``. The dataset has ``instances`` with
        ``ground_truth()`` (the COCO dict scored against), ``category_ids``, ``class_names`` and ``report`` (what
        reading dropped or kept aside, ``summary()``). A sample that cannot be read raises
        :class:`~anymae.core.data.samples.BadSampleError` naming the file.

        The default raises :class:`~anymae.core.data.samples.DataError`: the modality has no detection data.
        """
        raise DataError(f"modality {self.name!r} does not provide detection data (Modality.build_detection_dataset)")

    def load_detection_inputs(self, paths: Sequence[str | Path], data: Any, tokenizer: Any) -> list[Tensor]:
        """Files -> inputs (C, H, W) float32 at their own sizes, read as :meth:`build_detection_dataset` reads them
        (for ``anymae predict``). The default raises :class:`~anymae.core.data.samples.DataError`."""
        raise DataError(f"modality {self.name!r} does not provide detection data (Modality.load_detection_inputs)")
