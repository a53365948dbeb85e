"""Parquet files of a Hugging Face ``datasets`` table read as shards (``data.hf_streaming``): one file is one shard,
its rows the samples, read in order with ``pyarrow`` (the library ``datasets`` reads parquet with) without the
conversion to an Arrow cache that ``datasets.load_dataset("parquet")`` makes first.

A row becomes a sample in the shape of a tar shard's (``{__key__, __url__, <ext>: bytes, cls}``), so that the
shard machinery (the rank x worker split, the seeded shuffle buffer, exact resume, bad samples named and counted)
and the modality's decoders take it unchanged. The row counts come from the files' footers (an epoch is known
without reading a row); the class names from the ``ClassLabel`` feature ``datasets`` stores in the file's schema,
else ``0 .. max`` of the label column.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anymae.core.data.samples import DataError

__all__ = ["ROW_ERROR", "ParquetRows", "parquet_files", "parquet_samples", "row_sample"]

ROW_ERROR = "__error__"  # a row that holds no readable file: why (the decoder names it with shard and key)
ROWS_PER_BATCH = 64  # rows read from a file at once

# File signatures, for bytes stored without a file name: the extension the modality's reader expects.
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG", "png"), (b"RIFF", "wav"), (b"fLaC", "flac"), (b"OggS", "ogg"),
          (b"\x1a\x45\xdf\xa3", "webm"), (b"GIF8", "gif"), (b"BM", "bmp"), (b"\x93NUMPY", "npy"))  # fmt: skip


@dataclass(frozen=True)
class ParquetRows:
    """How a table's rows become samples: the column holding the file (bytes, or ``{"bytes", "path"}`` as an
    ``Image`` / ``Audio`` column stores it) and the class-index column (None: unlabelled)."""

    input_column: str
    label_column: str | None = None


def row_sample(value: Any, label: Any, *, name: str, row: int, rows: ParquetRows) -> dict[str, Any]:
    """One row as a shard sample ``{__key__: rowN, __url__: name, <ext>: bytes, cls}``; a row without file bytes,
    or whose type cannot be told, carries ``ROW_ERROR`` instead of media."""
    sample: dict[str, Any] = {"__key__": f"row{row}", "__url__": name}
    if rows.label_column is not None and label is not None:
        sample["cls"] = str(int(label)).encode()
    path = None
    if isinstance(value, dict):
        value, path = value.get("bytes"), value.get("path")
    if not isinstance(value, bytes) or not value:
        sample[ROW_ERROR] = f"column {rows.input_column!r} holds no file bytes"
        return sample
    ext = Path(path).suffix.lower().lstrip(".") if path else ""
    ext = ext or next((e for magic, e in _MAGIC if value.startswith(magic)), "")
    if not ext and value[4:8] == b"ftyp":
        ext = "mp4"
    if not ext:
        sample[ROW_ERROR] = "cannot tell the file type (no path with an extension, no known signature)"
        return sample
    sample[ext] = value
    return sample


def parquet_files(name: str, *, key: str) -> list[str]:
    """The parquet files ``name`` names: a file, a glob, or a folder of them (sorted)."""
    path = Path(name).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.glob("*.parquet"))
    elif any(c in name for c in "*?["):
        files = sorted(glob.glob(str(path)))
    else:
        files = [str(path)] if path.is_file() else []
    if not files:
        raise DataError(f"{key}: {name} names no parquet files (a .parquet file, a glob or a folder of them)")
    return files


def parquet_counts(files: Sequence[str], *, key: str) -> tuple[int, ...]:
    """Rows per file, from the footers (nothing else is read); a file that is not parquet is named."""
    import pyarrow.parquet as pq

    counts = []
    for file in files:
        try:
            counts.append(pq.ParquetFile(file).metadata.num_rows)
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a damaged footer
            raise DataError(f"{key}: {file} is not a readable parquet file: {exc}") from None
    return tuple(counts)


def parquet_classes(files: Sequence[str], rows: ParquetRows, *, key: str) -> tuple[str, ...]:
    """Class names of the label column: its ``ClassLabel`` names from the ``datasets`` schema metadata, else
    ``"0" .. str(max)`` from the column's values; the columns checked against the first file's."""
    import pyarrow.parquet as pq

    schema = pq.ParquetFile(files[0]).schema_arrow
    for column, which in ((rows.input_column, "hf_input_column"), (rows.label_column, "hf_label_column")):
        if column is not None and column not in schema.names:
            raise DataError(f"{key}: {files[0]} has no column {column!r} (data.{which}); columns: "
                            f"{', '.join(schema.names)}")  # fmt: skip
    if rows.label_column is None:
        return ()
    features = json.loads((schema.metadata or {}).get(b"huggingface", b"{}")).get("info", {}).get("features", {})
    names = features.get(rows.label_column, {}).get("names")
    if names:
        return tuple(names)
    import pyarrow.compute as pc

    tops = [pc.max(pq.read_table(f, columns=[rows.label_column]).column(0)).as_py() for f in files]
    top = max((t for t in tops if t is not None), default=-1)
    return tuple(str(i) for i in range(top + 1))


def parquet_samples(url: str, rows: ParquetRows) -> Iterator[dict[str, Any]]:
    """The rows of one parquet file as shard samples, in order (``ROWS_PER_BATCH`` at a time)."""
    import pyarrow.parquet as pq

    columns = [rows.input_column] + ([rows.label_column] if rows.label_column else [])
    n = 0
    with pq.ParquetFile(url) as file:
        for batch in file.iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
            values = batch.column(0).to_pylist()
            labels = batch.column(1).to_pylist() if rows.label_column else [None] * len(values)
            for value, label in zip(values, labels, strict=True):
                yield row_sample(value, label, name=url, row=n, rows=rows)
                n += 1
