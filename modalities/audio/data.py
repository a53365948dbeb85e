"""Audio file lists for pre-training: AudioSet JSON, ``path label`` CSV, folder-per-class and flat folders.

Every list becomes ``(path, label)`` entries; a dataset item is the model input, an fbank tensor (1, T, F),
paired with its label when the list has labels (labels are ignored by pre-training):

* AudioSet JSON ``{"data": [{"wav": path, "labels": "/m/..,/m/.."}]}`` with ``class_labels_indices.csv``
  (columns ``index,mid,display_name``): a multi-hot float vector over the classes;
* CSV, one ``path label`` (or ``path,label``) line per clip; an optional header ``path label``: a class index
  (labels sorted by name). A line with only ``class/file.wav`` takes its label from the folder name (Speech
  Commands' ``validation_list.txt`` / ``testing_list.txt``);
* a metadata table with a header naming its columns (ESC-50's ``meta/esc50.csv``:
  ``filename,fold,target,category,...``): the path column (``filename``/``path``/``file``/``wav``), the label
  column (``label``/``category``/``class``/``target``) and an optional ``fold`` column; with both ``category``
  and an integer ``target`` the classes are numbered by ``target``;
* a folder of class sub-folders: a class index (sub-folders sorted by name; folders starting with ``_`` or
  ``.``, such as Speech Commands' ``_background_noise_``, are not classes);
* a flat folder of audio files: no label.

Relative paths in JSON/CSV lists are resolved against the list's own folder, or against ``base`` when given
(ESC-50 lists ``1-100032-A-0.wav`` in ``meta/`` for files in ``audio/``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anymae.core.data.files import find_files, under_root
from anymae.core.data.samples import BadSampleError, DataError, DatasetTraits, DatasetWithTraits, TimedItems

from .decode import audio_duration, crop_waveform, load_waveform, roll_mag_augment
from .features import features, samples_for_frames

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioClips",
    "ClipList",
    "FeatureSettings",
    "find_audio",
    "read_audioset_json",
    "read_clip_list",
    "read_csv_list",
    "read_folder",
    "select_folds",
    "without_files",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".oga", ".m4a", ".aac", ".mp4", ".webm", ".aif", ".aiff")


@dataclass(frozen=True)
class ClipList:
    """Files and their labels: ``labels`` is None (unlabelled), class indices, or multi-hot rows (or tuples of
    class indices: a compact multi-hot form);
    ``folds``: each file's fold number when the list has a ``fold`` column (ESC-50), else None."""

    files: list[Path]
    labels: list[Any] | None
    classes: list[str]
    folds: list[int] | None = None


@dataclass(frozen=True)
class FeatureSettings:
    """How one file becomes a model input (see ``features.features``)."""

    sample_rate: int
    num_mel_bins: int
    target_length: int
    mean: float
    std: float

    def features(self, wave: Tensor) -> Tensor:
        """wave (S,) at ``sample_rate`` -> the model input (1, target_length, num_mel_bins)."""
        return features(
            wave,
            sample_rate=self.sample_rate,
            num_mel_bins=self.num_mel_bins,
            target_length=self.target_length,
            mean=self.mean,
            std=self.std,
        )


def find_audio(folder: Path) -> list[Path]:
    """Every audio file below ``folder``, sorted for a deterministic order."""
    return find_files(folder, AUDIO_EXTENSIONS)


def read_folder(folder: Path) -> ClipList:
    """Class sub-folders (labels = sorted sub-folder index) or a flat folder (no labels)."""
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist")
    flat = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    classes = sorted(
        d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")) and find_audio(d)
    )
    if flat or not classes:
        files = find_audio(folder)
        if not files:
            raise DataError(f"no audio files ({' '.join(AUDIO_EXTENSIONS)}) under {folder}")
        return ClipList(files, None, [])
    files, labels = [], []
    for index, name in enumerate(classes):
        for path in find_audio(folder / name):
            files.append(path)
            labels.append(index)
    return ClipList(files, labels, classes)


def read_label_csv(path: Path) -> tuple[dict[str, int], list[str]]:
    """AudioSet's ``class_labels_indices.csv`` (``index,mid,display_name``) -> (mid -> index, display names)."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DataError(f"data.label_csv: cannot read {path}: {exc.strerror or exc}") from None
    if not rows or not {"index", "mid"} <= set(rows[0]):
        raise DataError(f"data.label_csv: {path} needs a header with columns index,mid[,display_name]")
    index = {row["mid"]: int(row["index"]) for row in rows}
    names = [""] * (max(index.values()) + 1)
    for row in rows:
        names[int(row["index"])] = row.get("display_name") or row["mid"]
    return index, names


def read_audioset_json(
    path: Path, label_csv: Path | None, *, base: Path | None = None, compact: bool = False
) -> ClipList:
    """``{"data": [{"wav": ..., "labels": "/m/a,/m/b"}]}`` -> files and multi-hot rows (with ``label_csv``).

    ``compact``: each clip's labels as a sorted tuple of class indices instead of a (K,) row: AudioSet-2M's
    2M rows of 527 floats would take 4 GB, the tuples a few hundred MB (the datasets build rows per item)."""
    try:
        entries = json.loads(path.read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not an AudioSet list {{'data': [{{'wav': ..., 'labels': ...}}]}}: {exc}") from None
    index, names = read_label_csv(label_csv) if label_csv is not None else (None, [])
    files, labels = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "wav" not in entry:
            raise DataError(f"{path}: entry {i} has no 'wav' key: {entry!r}")
        files.append(under_root(entry["wav"], base or path.parent))
        if index is not None:
            positives = set()
            for mid in filter(None, str(entry.get("labels", "")).split(",")):
                if mid not in index:
                    raise DataError(f"{path}: entry {i} has label {mid!r}, which {label_csv} does not list")
                positives.add(index[mid])
            labels.append(tuple(sorted(positives)) if compact else _multi_hot(positives, len(names)))
    if not files:
        raise DataError(f"{path} lists no clips")
    return ClipList(files, labels if index is not None else None, names)


def _multi_hot(positives: set[int], num_classes: int) -> Tensor:
    row = torch.zeros(num_classes)
    row[list(positives)] = 1.0
    return row


PATH_COLUMNS = ("path", "filename", "file", "wav")
LABEL_COLUMNS = ("label", "category", "class", "target")


def read_csv_list(path: Path, *, base: Path | None = None) -> ClipList:
    """``path label`` / ``path,label`` / ``class/file`` lines, or a metadata table with a header -> files,
    class indices (and folds when the table has a ``fold`` column)."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line or line.startswith("#"):
            continue
        parts = next(csv.reader([line])) if "," in line else line.split()
        rows.append((number, [p.strip() for p in parts]))
    if not rows:
        raise DataError(f"{path} lists no clips")
    base = base or path.parent
    header = [name.lower() for name in rows[0][1]]
    if header[0] in PATH_COLUMNS:
        return _read_table(path, header, rows[1:], base)
    return _read_pairs(path, rows, base)


def _read_pairs(path: Path, rows: list[tuple[int, list[str]]], base: Path) -> ClipList:
    """``path label`` rows; a lone ``class/file`` takes its label from its folder name."""
    pairs = []
    for number, parts in rows:
        if len(parts) == 1 and "/" in parts[0].strip("/"):
            parts = [parts[0], Path(parts[0]).parent.name]
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected 'path label' (or 'class/file'), got {' '.join(parts)!r}")
        pairs.append(parts)
    classes = sorted({label for _, label in pairs})
    lookup = {name: i for i, name in enumerate(classes)}
    return ClipList([under_root(p, base) for p, _ in pairs], [lookup[label] for _, label in pairs], classes)


def _read_table(path: Path, header: list[str], rows: list[tuple[int, list[str]]], base: Path) -> ClipList:
    """A metadata table: path, label and optional fold columns picked by name from the header."""
    label_col = next((c for c in LABEL_COLUMNS if c in header), None)
    if label_col is None:
        raise DataError(f"{path}: the header {header} has no label column (one of {', '.join(LABEL_COLUMNS)})")
    index = {name: i for i, name in enumerate(header)}
    records = []
    for number, parts in rows:
        if len(parts) != len(header):
            raise DataError(f"{path}:{number}: {len(parts)} fields for the {len(header)} columns of the header")
        records.append({name: parts[i] for name, i in index.items()})
    if not records:
        raise DataError(f"{path} lists no clips")
    names = [r[label_col] for r in records]
    classes = _classes_by_target(path, records) if {"category", "target"} <= set(header) else sorted(set(names))
    lookup = {name: i for i, name in enumerate(classes)}
    folds = None
    if "fold" in index:
        try:
            folds = [int(r["fold"]) for r in records]
        except ValueError as exc:
            raise DataError(f"{path}: the fold column must hold integers: {exc}") from None
    files = [under_root(r[header[0]], base) for r in records]
    return ClipList(files, [lookup[n] for n in names], classes, folds)


def _classes_by_target(path: Path, records: list[dict[str, str]]) -> list[str]:
    """ESC-50's numbering: class ``target`` is named ``category``; the same pair on every row."""
    names: dict[int, str] = {}
    for r in records:
        try:
            target = int(r["target"])
        except ValueError:
            raise DataError(f"{path}: target {r['target']!r} is not an integer class index") from None
        if names.setdefault(target, r["category"]) != r["category"]:
            raise DataError(f"{path}: target {target} is both {names[target]!r} and {r['category']!r}")
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{path}: targets must be 0..{len(names) - 1}, got {sorted(names)[:10]}...")
    return [names[i] for i in range(len(names))]


def read_clip_list(
    source: Path, *, label_csv: Path | None = None, base: Path | None = None, compact: bool = False
) -> ClipList:
    """A ``.json`` (AudioSet), a ``.csv``/``.txt``/``.tsv`` list, or a folder; ``base`` resolves the relative
    paths of a list (default: the list's folder); ``compact``: see :func:`read_audioset_json`."""
    if source.is_dir():
        return read_folder(source)
    if not source.is_file():
        raise DataError(f"{source} does not exist")
    if source.suffix.lower() == ".json":
        return read_audioset_json(source, label_csv, base=base, compact=compact)
    if source.suffix.lower() in (".csv", ".txt", ".tsv"):
        return read_csv_list(source, base=base)
    raise DataError(f"{source}: expected a folder, an AudioSet .json or a 'path label' .csv")


def select_folds(clips: ClipList, fold: int, *, keep: bool) -> ClipList:
    """The clips of fold ``fold`` (``keep=True``, the held-out fold) or of every other fold (training)."""
    if clips.folds is None:
        raise DataError("data.fold is set but the list has no 'fold' column (e.g. ESC-50's meta/esc50.csv)")
    if fold not in clips.folds:
        raise DataError(f"data.fold={fold} is not among the list's folds {sorted(set(clips.folds))}")
    chosen = [i for i, f in enumerate(clips.folds) if (f == fold) == keep]
    return _subset(clips, chosen)


def without_files(clips: ClipList, excluded: set[Path]) -> ClipList:
    """``clips`` minus the files in ``excluded`` (compared as resolved paths)."""
    excluded = {p.resolve() for p in excluded}
    return _subset(clips, [i for i, f in enumerate(clips.files) if f.resolve() not in excluded])


def _subset(clips: ClipList, chosen: list[int]) -> ClipList:
    if not chosen:
        raise DataError("no clips are left after the fold / exclusion selection")
    return ClipList(
        [clips.files[i] for i in chosen],
        None if clips.labels is None else [clips.labels[i] for i in chosen],
        clips.classes,
        None if clips.folds is None else [clips.folds[i] for i in chosen],
    )


class AudioClips(DatasetWithTraits):
    """Files -> fbank inputs (1, T, F), with their label when the list has labels.

    ``crop``: ``random`` for training, ``center``/``start`` for evaluation (see ``decode.crop_waveform``);
    ``repeats`` lists every file that many times per epoch (each with its own random crop).
    """

    def __init__(
        self,
        clips: ClipList,
        *,
        settings: FeatureSettings,
        crop: str,
        roll_mag_aug: bool = False,
        repeats: int = 1,
    ) -> None:
        if not clips.files:
            raise DataError("no audio files given")
        self.clips = clips
        self.settings = settings
        self.crop = crop
        self.roll_mag_aug = roll_mag_aug
        self.repeats = repeats
        self.num_samples = samples_for_frames(settings.target_length, settings.sample_rate)

    def __len__(self) -> int:
        return len(self.clips.files) * self.repeats

    @property
    def traits(self) -> DatasetTraits:
        # Random crops can start where a composite model says (aligned with its other parts).
        return DatasetTraits(
            source=self.source, timed=TimedItems(self.span, self.at) if self.crop == "random" else None
        )

    def source(self, index: int) -> Path:
        """The file item ``index`` is read from."""
        return self.clips.files[index % len(self.clips.files)]

    def span(self, index: int) -> tuple[float, float]:
        """(the file's duration, the window's length) in seconds."""
        rate = self.settings.sample_rate
        return audio_duration(self.source(index)), self.num_samples / rate

    def at(self, index: int, start: float) -> Tensor:
        """Item ``index`` with its window starting ``start`` seconds into the file (the latest start that fits
        when later)."""
        return self.load(self.source(index), start=start)

    def load(self, path: Path, *, start: float | None = None) -> Tensor:
        """One file -> (1, T, F), cropped by ``crop`` or at ``start`` seconds; a file that cannot be decoded raises
        BadSampleError naming it."""
        s = self.settings
        wave = load_waveform(path, sample_rate=s.sample_rate)  # (S,), mean removed
        if start is None:
            wave = crop_waveform(wave, self.num_samples, mode=self.crop)
        else:
            first = min(round(start * s.sample_rate), max(wave.shape[0] - self.num_samples, 0))
            wave = wave[first : first + self.num_samples]
        if self.roll_mag_aug:
            wave = roll_mag_augment(wave)
        x = s.features(wave)
        if not torch.isfinite(x).all():
            raise BadSampleError(f"audio {path} gives non-finite filter-bank values")
        return x

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, Any]:
        i = index % len(self.clips.files)
        x = self.load(self.clips.files[i])
        if self.clips.labels is None:
            return x
        return x, self.clips.labels[i]
