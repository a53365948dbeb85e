"""``anymae visualize``: a checkpoint's reconstructions of input files, drawn as the modality's figure.

Each input is masked with a seeded draw of the model's own strategy (at ``mask_ratio`` when given) and
reconstructed by the decoder; the figure shows original, masked, reconstruction and reconstruction + visible
patches per input. A composite model reads every input file with every part (a media file with a video and an
audio stream, say), draws one joint mask per file and stacks the parts' figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anymae.core.build.data_source import modality_for
from anymae.core.config import ConfigError, from_dict, resolve_model_config
from anymae.core.config.stream import data_section
from anymae.core.data.shards import is_shard_input
from anymae.core.evaluate.composite import composite_figure
from anymae.core.evaluate.embed import expand_inputs
from anymae.core.io.checkpoint import CheckpointError
from anymae.core.model.composite import MultiModalMAE
from anymae.core.model.figures import render_figure
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.model.masking import sample_mask
from anymae.core.weights.loading import load_model
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["Reconstruction", "visualize_checkpoint"]


@dataclass
class Reconstruction:
    """What ``anymae visualize`` drew: the figure, the masked-patch loss and, for a composite, each part's."""

    path: Path
    loss: float
    caption: str = ""  # the figure's note on how removed patches are drawn (norm-pix models)
    part_losses: dict[str, float] = field(default_factory=dict)


def visualize_checkpoint(
    checkpoint: str | Path,
    inputs: list[str],
    output: str | Path,
    *,
    mask_ratio: float | None = None,
    seed: int = 0,
    raw_stats: bool = False,
    registry: Registry | None = None,
) -> Reconstruction:
    """Draw ``checkpoint``'s reconstructions of ``inputs`` to ``output`` (the masks seeded with ``seed``).
    ``raw_stats``: norm-pix models draw removed patches with the visible patches' average mean and std, not each
    true patch's. A checkpoint without decoder weights is refused. A shard input (``x.tar#key``: one held-out
    sample; ``x.tar``: all of them) is drawn from its samples' media."""
    registry = resolve_registry(registry)
    inputs = [str(f) for item in inputs for f in (expand_inputs([item]) if is_shard_input(item) else [item])]
    model = load_model(checkpoint)
    if isinstance(model, MultiModalMAE):
        return _composite(model, checkpoint, inputs, Path(output), mask_ratio=mask_ratio, seed=seed,
                          raw_stats=raw_stats, registry=registry)  # fmt: skip
    if model.decoder is None:
        raise CheckpointError(
            f"{checkpoint} has no decoder weights, so it cannot reconstruct; use a checkpoint with a decoder "
            "(an anymae run, mae_visualize_*.pth or mae_pretrain_*_full.pth)"
        )
    return _single(model, inputs, output, mask_ratio=mask_ratio, seed=seed, raw_stats=raw_stats, registry=registry)


def _single(
    model: MaskedAutoencoder, inputs: list[str], output: str | Path, *, mask_ratio: float | None, seed: int,
    raw_stats: bool, registry: Registry,
) -> Reconstruction:  # fmt: skip
    model.eval()
    model_cfg = resolve_model_config(model.config["model"], registry)
    modality = modality_for(model_cfg, registry=registry)
    # anymae checkpoints carry their data section; official and HF models use the modality's defaults.
    data_cfg = data_section(modality.data_config, model.config.get("data") or {}, "data")
    x = modality.load_inputs(inputs, data_cfg, model_cfg.tokenizer)
    forced = sample_mask(
        model.masking,
        batch=x.shape[0],
        grid=model.tokenizer.grid,
        mask_ratio=model.mask_ratio if mask_ratio is None else mask_ratio,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        loss, pred, mask = model(x, mask=forced)
    out, caption = render_figure(
        modality, model, inputs=x, pred=pred, mask=mask, data=data_cfg, path=output, raw_stats=raw_stats
    )
    return Reconstruction(path=Path(out), loss=loss.item(), caption=caption or "")


def _composite(
    model: Any, checkpoint: str | Path, inputs: list[str], output: Path, *, mask_ratio: float | None, seed: int,
    raw_stats: bool, registry: Registry,
) -> Reconstruction:  # fmt: skip
    """Every input file read by every part; one joint mask per file (each part's strategy and ratio)."""
    if not model.decoders():
        raise CheckpointError(f"{checkpoint} has no decoder weights, so it cannot reconstruct")
    if mask_ratio is not None:
        raise ConfigError("--mask-ratio: a composite model masks each part at its own ratio (model.parts.<part>)")
    model.eval()
    cfg = resolve_model_config(model.config["model"], registry)
    modality = modality_for(cfg, registry=registry)
    stored = model.config.get("data") or {}
    data, x = {}, {}
    for name, part in modality.modalities.items():
        data[name] = from_dict(part.data_config, stored.get(name) or {}, f"data.{name}")
        x[name] = part.load_inputs(inputs, data[name], cfg.parts[name].tokenizer)
    mask = model.draw_mask(len(inputs), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(x, mask=mask)
    path = composite_figure(model, modality, data, x, out, output, raw_stats=raw_stats)
    return Reconstruction(
        path=Path(path), loss=float(out.loss), part_losses={name: float(loss) for name, loss in out.losses.items()}
    )
