"""A composite model's held-out check: each part's masked-patch loss next to its trivial baseline, the
weighted total, one reconstruction figure with every part, and the cross-modal check.

The cross-modal check asks whether the model uses the other parts: part ``p``'s masked-patch loss with every other
part visible (as masked for training) against the same loss, on the same masks of ``p``, with every other part
dropped. A model that reads nothing across parts scores the two alike.

Retrieval (``anymae retrieve``'s recall) between the first two parts over the same held-out items: each part alone,
unmasked, pooled; its R@1 next to chance says whether the parts' representations match (CAV-MAE's measure).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from anymae.core.build.composite_data import CompositeModality, stack_figures
from anymae.core.data.samples import SafeDataset, to_device
from anymae.core.evaluate.retrieval import part_embeddings, recall_at_k, retrieval_line
from anymae.core.model.composite import CompositeOutput, MultiModalMAE
from anymae.core.model.figures import render_figure
from anymae.core.model.loss import masked_mse, patch_mean_baseline

__all__ = ["HeldoutParts", "check_composite", "composite_figure"]


@dataclass
class HeldoutParts:
    loss: float  # sum over the parts of loss_weight x the part's held-out masked-patch loss
    baseline: float  # the same for the trivial predictor (each removed patch its own mean)
    record: dict[str, float] = field(default_factory=dict)  # per-part figures for the metrics row
    part_summaries: list[str] = field(default_factory=list)  # "video 0.41 (0.52x)"
    cross_lines: list[str] = field(default_factory=list)  # "cross-modal check: ..." per part
    retrieval_lines: list[str] = field(default_factory=list)  # "retrieval video->audio: R@1 ..." per direction
    figure: Path | None = None


@torch.no_grad()
def check_composite(
    model: MultiModalMAE, modality: CompositeModality, cfg: Any, dataset: Dataset, *, device: torch.device, path: Path
) -> HeldoutParts:
    """Held-out losses of every part on joint masks fixed by ``train.seed`` (no modality dropout), over
    ``train.heldout_batches`` batches, with and without the other parts; the figure of the first samples at
    ``path`` (each part's own figure beside it as ``<name>-<part>.png``). Leaves the model in eval mode."""
    model.eval()
    safe = SafeDataset(dataset, max_bad_fraction=cfg.train.max_bad_fraction, seed=cfg.train.seed)
    loader = DataLoader(safe, batch_size=cfg.train.batch_size, shuffle=False, generator=torch.Generator())
    generator = torch.Generator().manual_seed(cfg.train.seed)
    names = list(model.parts)
    pair = names[:2]  # the parts retrieval matches
    embedded: list[torch.Tensor] = []  # (N, E_a + E_b) per batch
    sums = {key: dict.fromkeys(names, 0.0) for key in ("loss", "baseline", "alone")}
    counts = dict.fromkeys(names, 0.0)
    figure = None
    for i, batch in enumerate(loader):
        if i >= max(cfg.train.heldout_batches, 1):
            break
        x = to_device(batch["input"], device)
        mask = model.draw_mask(next(iter(x.values())).shape[0], generator=generator).to(device)
        out = model(x, mask=mask)
        for name in names:
            part_mask = model.part_mask(mask, name).float()
            count = float(part_mask.sum())
            target = model.parts[name].forward_target(x[name]).float()
            sums["loss"][name] += float(masked_mse(out.pred[name].float(), target, part_mask)) * count
            sums["baseline"][name] += float(patch_mean_baseline(target, part_mask)) * count
            # The same masks of this part, every other part dropped.
            alone = model(x, mask=model.drop(mask, [n for n in names if n != name]))
            sums["alone"][name] += float(alone.losses[name]) * count
            counts[name] += count
        embedded.append(part_embeddings(model, x, pair).float().cpu())
        if i == 0 and cfg.train.figure_samples > 0:
            k = cfg.train.figure_samples
            figure = composite_figure(model, modality, cfg.data, {n: v[:k] for n, v in x.items()}, out, path)
    mean = {key: {n: sums[key][n] / counts[n] for n in names} for key in sums}
    weights = {n: model.parts[n].loss_weight for n in names}
    held = HeldoutParts(
        loss=sum(weights[n] * mean["loss"][n] for n in names),
        baseline=sum(weights[n] * mean["baseline"][n] for n in names),
        figure=figure,
    )
    for n in names:
        ratio = mean["loss"][n] / mean["baseline"][n] if mean["baseline"][n] else float("nan")
        held.record.update({f"heldout_loss_{n}": mean["loss"][n], f"baseline_loss_{n}": mean["baseline"][n],
                            f"heldout_loss_{n}_others_dropped": mean["alone"][n]})  # fmt: skip
        held.part_summaries.append(f"{n} {mean['loss'][n]:.4f}, {ratio:.2f}x")
        others = " and the ".join(o for o in names if o != n)
        held.cross_lines.append(
            f"cross-modal check: {n} masked loss {mean['loss'][n]:.4f} with the {others} visible vs "
            f"{mean['alone'][n]:.4f} with the {others} dropped (the same {n} masks)"
        )
    rows = torch.cat(embedded)
    if rows.shape[0] >= 2:
        a, b = rows.split(rows.shape[1] // 2, dim=1)
        for (q, k), (q_name, k_name) in (((a, b), pair), ((b, a), pair[::-1])):
            scores = recall_at_k(q, k)
            held.record.update({f"retrieval_{q_name}_to_{k_name}_R@{r}": scores[f"R@{r}"] for r in (1, 5, 10)})
            held.retrieval_lines.append(retrieval_line(f"{q_name}->{k_name}", scores, rows.shape[0]))
    return held


def composite_figure(
    model: MultiModalMAE,
    modality: CompositeModality,
    data: dict[str, Any],
    x: dict[str, Any],
    out: CompositeOutput,
    path: Path,
    *,
    raw_stats: bool = False,
) -> Path:
    """Each part's reconstruction figure of the first ``len(x[part])`` samples of ``out`` (its modality draws it),
    stacked into one PNG at ``path``."""
    figures = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, part in model.parts.items():
            if name not in out.pred:
                continue
            k = x[name].shape[0]
            drawn, _ = render_figure(modality.modalities[name], part, inputs=x[name], pred=out.pred[name][:k],
                                     mask=model.part_mask(out.mask, name)[:k], data=data[name],
                                     path=Path(scratch) / f"{name}.png", raw_stats=raw_stats)  # fmt: skip
            figures[name] = drawn
        return stack_figures(figures, path)
