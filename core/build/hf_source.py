"""A split read from a Hugging Face ``datasets`` table (``data.hf_dataset``, ``data.hf_heldout``): a folder written
by ``save_to_disk``, parquet files, or (only when named) a dataset on the hub.

The table is memory-mapped Arrow (``datasets``' own cache for parquet), read row by row: a row is a random access,
so the split is an ordinary map-style dataset and the training loop's sampler, resume and bad-sample handling
apply unchanged. The media column holds the file's bytes (a ``bytes`` value, or ``{"bytes", "path"}`` as an
``Image`` / ``Audio`` column stores them, read undecoded); the modality decodes them as its own files
(:class:`~anymae.core.build.shard_source.ScratchDecoder`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anymae.core.build.scratch import ScratchDecoder
from anymae.core.config.stream import StreamConfig
from anymae.core.data.parquet import ParquetRows, row_sample
from anymae.core.data.samples import BadSampleError, DataError, DatasetTraits, DatasetWithTraits

__all__ = ["HFRows", "hf_split", "is_saved_dataset"]

_HELDOUT_SPLITS = ("validation", "val", "heldout", "test")


def hf_split(
    modality: Any,
    data: Any,
    tokenizer: Any,
    stream: StreamConfig,
    *,
    split: str,
    labelled: bool,
    augment: dict[str, Any] | None,
    crop_pct: float,
) -> HFRows:
    """Split ``split`` of ``data`` from its ``datasets`` table, decoded by ``modality``."""
    key = "data.hf_dataset" if split == "train" else "data.hf_heldout"
    name = stream.hf_dataset if split == "train" else stream.hf_heldout
    table = _load(str(name), split=split, key=key)
    decode = ScratchDecoder(modality, data, tokenizer, split=split, labelled=labelled, augment=augment,
                            crop_pct=crop_pct)  # fmt: skip
    return HFRows(table, decode=decode, name=str(name), key=key, input_column=stream.hf_input_column,
                  label_column=stream.hf_label_column if labelled else None)  # fmt: skip


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder ``datasets``' ``save_to_disk`` wrote (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json"))


def _load(name: str, *, split: str, key: str) -> Any:
    """The table ``name`` names: a ``save_to_disk`` folder (a DatasetDict: its train / validation split), parquet
    files (a file, a glob, or a folder of them), else a dataset on the hub (downloaded: the user named it)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{key} needs the `datasets` package: pip install 'anymae[hf]'") from None
    path = Path(name).expanduser()
    if is_saved_dataset(path):
        table = datasets.load_from_disk(str(path))
    elif name.endswith(".parquet") or (path.is_dir() and any(path.glob("*.parquet"))):
        files = sorted(str(p) for p in path.glob("*.parquet")) if path.is_dir() else name
        table = datasets.load_dataset("parquet", data_files=files, split="train")
    elif path.exists():
        raise DataError(f"{key}: {path} is neither a `save_to_disk` folder nor parquet files")
    else:
        table = datasets.load_dataset(name)
    if isinstance(table, datasets.DatasetDict):
        wanted = ("train",) if split == "train" else _HELDOUT_SPLITS
        found = next((s for s in wanted if s in table), None)
        if found is None:
            raise DataError(f"{key}: {name} has splits {list(table)}, none of {list(wanted)}")
        table = table[found]
    return table


class HFRows(DatasetWithTraits):
    """Rows of a ``datasets`` table as the modality's items: item ``i`` is view ``i mod V`` of row ``i // V``."""

    def __init__(
        self, table: Any, *, decode: ScratchDecoder, name: str, key: str, input_column: str, label_column: str | None
    ) -> None:
        import datasets

        for column in (input_column, label_column):
            if column is not None and column not in table.column_names:
                which = "hf_input_column" if column == input_column else "hf_label_column"
                raise DataError(f"{key}: {name} has no column {column!r} (data.{which}); columns: "
                                f"{', '.join(table.column_names)}")  # fmt: skip
        feature = table.features[input_column]
        if isinstance(feature, (datasets.Image, datasets.Audio)):  # the stored bytes, not a decoded array
            table = table.cast_column(input_column, type(feature)(decode=False))
        self.table, self.decode, self.name = table, decode, name
        self.input_column, self.label_column = input_column, label_column
        self.rows = ParquetRows(input_column, label_column)
        self.classes: list[str] = []
        if label_column is not None:
            label = table.features[label_column]
            names = label.names if isinstance(label, datasets.ClassLabel) else None
            self.classes = list(names) if names else [str(i) for i in range(max(table[label_column]) + 1)]
        if len(table) == 0:
            raise DataError(f"{key}: {name} has no rows")
        self.views = len(self.decode(self._sample(0)))

    @property
    def traits(self) -> DatasetTraits:
        return DatasetTraits(classes=tuple(self.classes))

    def __len__(self) -> int:
        return len(self.table) * self.views

    def __getitem__(self, i: int) -> Any:
        row, view = divmod(i, self.views)
        sample = self._sample(row)
        try:
            return self.decode(sample)[view]
        except BadSampleError:
            raise
        except Exception as exc:
            raise BadSampleError(f"{self.name}, row {row}: {type(exc).__name__}: {exc}") from exc

    def _sample(self, row: int) -> dict[str, Any]:
        """Row ``row`` in the shape of a shard sample: ``{__key__, __url__, <ext>: bytes, cls}``."""
        record = self.table[row]
        label = record[self.label_column] if self.label_column is not None else None
        return row_sample(record[self.input_column], label, name=self.name, row=row, rows=self.rows)
