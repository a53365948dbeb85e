"""``anymae convert``: any checkpoint anymae reads -> an anymae file, or a layout a registered format writes.

The source is whatever :func:`~anymae.core.weights.loading.load_any` opens (pre-trained MAEs and classifiers, anymae's
own files, every registered checkpoint format); the model it builds is written back out in the target layout:

- ``anymae``: ``{"format": "anymae" | "anymae-classifier", "config", "model"}`` (``.pt``), or safetensors with
  the config in the metadata, as ``anymae export`` writes;
- any ``export_targets`` of a registered :class:`~anymae.core.weights.formats.CheckpointFormat`: the image plugin's
  ``official`` (the official MAE layout; VideoMAE's for video models, through the video plugin) and ``timm``
  (timm's ``VisionTransformer``, its constructor written next to the file as ``<name>.timm.json``).

Every output is checked before the command returns (unless ``verify=False``): anymae files are read back and
must hold exactly the same tensors; other layouts are checked as their format says (read back through the
importer, loaded into timm's model and compared on a random input, or the written tensors compared).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anymae.core.build.classifier import Classifier
from anymae.core.io.checkpoint import (
    CheckpointError,
    export_safetensors,
    read_checkpoint,
    read_payload,
    read_safetensors,
    write_checkpoint,
)
from anymae.core.io.hub import resolve_source
from anymae.core.weights.formats import Export, ordered_formats
from anymae.core.weights.loading import CHECKPOINT_FORMAT, CLASSIFIER_FORMAT, load_any
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["ConvertResult", "convert", "export_hugging_face", "export_weights", "targets", "verify_reload"]

ANYMAE_TARGET = "anymae"
HUGGING_FACE_TARGET = "hf"  # a transformers folder: anymae export --hf DIR


def targets(registry: Registry | None = None) -> tuple[str, ...]:
    """The layouts ``convert`` writes: ``anymae`` and every registered format's ``export_targets``."""
    found = [t for _, _, fmt in ordered_formats(resolve_registry(registry)) for t in fmt.export_targets]
    return (ANYMAE_TARGET, *(t for t in dict.fromkeys(found) if t != HUGGING_FACE_TARGET))


@dataclass
class ConvertResult:
    """What ``convert`` wrote: the file, its layout, the model kind, and notes for the user."""

    path: Path
    target: str
    kind: str  # "mae" or "classifier"
    num_tensors: int
    num_values: int
    timm: dict[str, Any] | None = None  # the sidecar JSON (--to timm: timm's constructor spec)
    timm_spec_path: Path | None = None  # where the sidecar was written
    notes: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None  # what the format's check measured (--to timm: timm vs anymae)
    export: Export | None = None  # what the format gave (None for --to anymae)


def convert(
    source: str | Path,
    dest: str | Path,
    *,
    to: str = "anymae",
    file_format: str | None = None,
    num_heads: int | None = None,
    verify: bool = True,
    registry: Registry | None = None,
) -> ConvertResult:
    """Read ``source`` and write it to ``dest`` in the layout ``to`` (``anymae``, or a registered format's target:
    ``official`` and ``timm`` with the built-in plugins).

    ``file_format`` is ``pt`` or ``safetensors`` (default: ``safetensors`` for a ``.safetensors`` ``dest``);
    ``num_heads`` is needed for official / timm sources whose width is not an official one.
    """
    registry = resolve_registry(registry)
    known = targets(registry)
    if to not in known:
        raise ValueError(f"--to {to!r}: expected one of {', '.join(known)}")
    dest = Path(dest)
    file_format = file_format or ("safetensors" if dest.suffix == ".safetensors" else "pt")
    if file_format not in ("pt", "safetensors"):
        raise ValueError(f"--format {file_format!r}: expected pt or safetensors")
    if (file_format == "safetensors") != (dest.suffix == ".safetensors"):  # readers pick the format by suffix
        ending = "ending" if file_format == "safetensors" else "not ending"
        raise ValueError(f"--format {file_format} needs an output name {ending} in .safetensors, got {dest.name}")
    model = load_any(source, num_heads=num_heads, registry=registry).eval()
    result = _write(model, dest, to=to, file_format=file_format, registry=registry)
    if verify:
        try:
            _verify(model, result, registry=registry)
        except (CheckpointError, ValueError) as exc:  # no unverified file is left under the name asked for
            for path in (dest, result.timm_spec_path):
                if path is not None:
                    path.unlink(missing_ok=True)
            raise CheckpointError(
                f"{dest} was written but failed its check, so it was removed ({exc}); --no-verify keeps it unchecked"
            ) from None
    return result


def export_hugging_face(
    source: str | Path, dest: str | Path, *, registry: Registry | None = None
) -> tuple[Path, float | None]:
    """``anymae export CKPT --hf DIR``: the model as a folder ``transformers`` loads with ``from_pretrained(DIR)``
    (config, safetensors, a model card with the run's config and its last held-out figures), written by the
    format that registers the ``hf`` target for the model's modality, then loaded back by ``transformers`` and run
    beside the anymae model -> (the folder, the max abs difference of their predictions)."""
    registry = resolve_registry(registry)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise CheckpointError(f"--hf {dest}: the folder exists and is not empty")
    model = load_any(source, registry=registry).eval()
    export = _export(model, to=HUGGING_FACE_TARGET, dest=dest, registry=registry)
    (dest / "README.md").write_text(_model_card(model, source))
    return dest, export.verify(dest) if export.verify is not None else None


def _model_card(model: nn.Module, source: str | Path) -> str:
    """A short model card: what the weights are, how to load them, the run's training config (from an anymae
    checkpoint) and its last held-out figures (from the run folder's ``metrics.jsonl``)."""
    path = resolve_source(source)
    payload = read_payload(path) if path.is_file() else None
    stored = payload if isinstance(payload, dict) else {}
    config = stored.get("run_config") or stored.get("config") or model.config
    measured = _last_heldout_record(path.parent / "metrics.jsonl") if path.is_file() else {}
    lines = [
        "---", "library_name: transformers", "tags: [anymae, mae, masked-autoencoder]", "---", "",
        f"# {config.get('name') or path.stem}", "",
        f"A masked autoencoder trained with anymae, exported from `{path.name}`. Load it with",
        "`transformers.ViTMAEForPreTraining.from_pretrained(PATH)`.", "", "## Measured", "",
        *([f"- {k}: {v}" for k, v in measured.items()] or ["- no held-out figures were found beside the checkpoint"]),
        "", "## Training config", "", "```json", json.dumps(config, indent=2, default=str), "```", "",
    ]  # fmt: skip
    return "\n".join(lines)


def _last_heldout_record(metrics: Path) -> dict[str, Any]:
    """The held-out / evaluation figures of the last check a run wrote (empty without a metrics file)."""
    if not metrics.is_file():
        return {}
    found: dict[str, Any] = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        checked = {k: v for k, v in record.items() if k.startswith(("heldout_", "eval_", "knn_", "baseline_"))}
        if checked:
            found = {"step": record.get("step"), "epoch": record.get("epoch"), **checked}
    return found


def export_weights(source: str | Path, output: str | Path) -> tuple[Path, int]:
    """``anymae export``: the model weights of anything :func:`load_any` reads as a safetensors file (no pickle, no
    code; the model config in its metadata) -> (the path written, the number of values)."""
    model = load_any(source)
    return export_safetensors(model, output), sum(t.numel() for t in model.state_dict().values())


def _write(model: nn.Module, dest: Path, *, to: str, file_format: str, registry: Registry) -> ConvertResult:
    """Write ``model`` to ``dest`` in the layout ``to`` (and the format's sidecar JSON next to it)."""
    kind = "classifier" if isinstance(model, Classifier) else "mae"
    export = None
    if to == ANYMAE_TARGET:
        state, notes = _write_anymae(model, dest, file_format, kind), []
    else:
        export = _export(model, to=to, dest=dest, registry=registry)
        state, notes = export.state, list(export.notes)
        _write_state({"model": state} if export.wrap and file_format == "pt" else state, dest, file_format)
    if model.config.get("classifier", {}).get("learned_pos_embed"):
        notes = [*notes, "pos_embed is learned (official fine-tuning trains it): kept, not the fixed sin-cos table"]
    result = ConvertResult(
        path=dest,
        target=to,
        kind=kind,
        num_tensors=len(state),
        num_values=sum(t.numel() for t in state.values()),
        notes=notes,
        export=export,
    )
    if export is not None and export.sidecar is not None:
        result.timm = export.sidecar
        result.timm_spec_path = dest.with_name(f"{dest.stem}.{to}.json")
        result.timm_spec_path.write_text(json.dumps(export.sidecar, indent=2) + "\n")
    return result


def _export(model: nn.Module, *, to: str, dest: Path, registry: Registry) -> Export:
    """The first registered format (fallbacks last) that writes ``model`` in the layout ``to``."""
    for _, _, fmt in ordered_formats(registry):
        if to in fmt.export_targets:
            export = fmt.export(model, target=to, dest=dest, registry=registry)
            if export is not None:
                return export
    modality = model.config.get("model", {}).get("modality", "?")
    raise CheckpointError(
        f"no registered checkpoint format writes a {modality!r} model as --to {to}; --to anymae keeps every modality"
    )


def _verify(model: nn.Module, result: ConvertResult, *, registry: Registry) -> None:
    """anymae: read back, the same tensors; other layouts: the format's check, or the written tensors compared
    with the export's (a layout may not record what a reader needs, e.g. VideoMAE's clip shape)."""
    export = result.export
    if export is None:
        verify_reload(model, result.path, registry=registry)
        return
    if export.verify is not None:
        result.max_abs_diff = export.verify(result.path)
        return
    written, expected = _read_flat(result.path), export.state
    written = written["model"] if isinstance(written.get("model"), dict) else written  # .pt: {'model': ...}
    changed = sorted(k for k in expected if k not in written or not torch.equal(written[k], expected[k]))
    if changed or set(written) != set(expected):
        raise CheckpointError(f"{result.path} read back with different tensors: {changed[:10]}")


# --- anymae -------------------------------------------------------------------------------------------------
def _write_anymae(model: nn.Module, dest: Path, file_format: str, kind: str) -> dict[str, Tensor]:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if file_format == "safetensors":
        export_safetensors(model, dest)  # the config (with a "classifier" section for classifiers) in metadata
    else:
        fmt = CLASSIFIER_FORMAT if kind == "classifier" else CHECKPOINT_FORMAT
        write_checkpoint({"format": fmt, "config": model.config, "model": state}, dest)
    return state


# --- files ------------------------------------------------------------------------------------------------
def _write_state(payload: dict[str, Any], dest: Path, file_format: str) -> None:
    if file_format == "pt":
        write_checkpoint(payload, dest)
    else:
        _write_safetensors(payload, dest)


def _read_flat(path: Path) -> dict[str, Tensor]:
    """A flat state dict written by :func:`_write_state` (what a timm user loads), read back safely."""
    return read_safetensors(path)[0] if path.suffix == ".safetensors" else read_checkpoint(path)


def _write_safetensors(state: dict[str, Tensor], dest: Path) -> None:
    """Write a flat state dict as safetensors atomically (temp file + rename), as ``checkpoint.py`` does."""
    from safetensors.torch import save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def verify_reload(model: nn.Module, dest: Path, *, registry: Registry) -> None:
    """Read ``dest`` back and require exactly the tensors of ``model`` (names and values)."""
    heads = model.encoder.blocks[0].attn.num_heads
    again = load_any(dest, num_heads=heads, registry=registry)
    ours, theirs = model.state_dict(), again.state_dict()
    if set(ours) != set(theirs):
        raise CheckpointError(
            f"{dest} read back with different keys: missing {sorted(set(ours) - set(theirs))[:10]}, "
            f"unexpected {sorted(set(theirs) - set(ours))[:10]}"
        )
    changed = [k for k in ours if not torch.equal(ours[k].cpu(), theirs[k].cpu())]
    if changed:
        raise CheckpointError(f"{dest} read back with different values for {changed[:10]}")
