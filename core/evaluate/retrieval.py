"""Cross-modal retrieval of a composite model (``anymae retrieve``): CAV-MAE's audio->visual and visual->audio
recall at 1, 5 and 10 (Gong et al., ICLR 2023, section 4.3).

Each held-out item's parts are encoded one at a time with no masking (the part alone through the encoder,
mean-pooled, through the contrastive projection when the model has one, L2-normalised); every item of one part
is ranked by cosine similarity against every item of the other, and its own partner's rank scores it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset

from anymae.core.build.composite_data import CompositeModality
from anymae.core.build.data_source import modality_for
from anymae.core.build.shard_source import split_dataset
from anymae.core.config import (
    COMPOSITE,
    ConfigError,
    data_with_overrides,
    resolve_model_config,
    resolve_part_data,
)
from anymae.core.data.samples import DataError, DatasetTraits, DatasetWithTraits
from anymae.core.distributed.context import resolve_device
from anymae.core.evaluate.knn import compute_features
from anymae.core.model.composite import MultiModalMAE
from anymae.core.model.figures import caption_strip
from anymae.core.weights.loading import load_model
from anymae.plugins.manager import Registry, resolve_registry

__all__ = ["RECALL_AT", "RetrievalReport", "recall_at_k", "retrieval_line", "retrieve_command"]

RECALL_AT = (1, 5, 10)  # CAV-MAE's R@1, R@5, R@10


@dataclass
class RetrievalReport:
    pairs: int  # held-out items with every part readable
    skipped: int  # items with an unreadable part, left out
    directions: dict[str, dict[str, float]] = field(default_factory=dict)  # "audio->video" -> {"R@1": %, ...}
    output: Path | None = None  # the JSON file
    figure: Path | None = None


def recall_at_k(queries: Tensor, keys: Tensor, ks: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """queries, keys (N, E) unit rows, row i of each the same item -> {"R@k": % of queries whose own key is among
    the k most similar keys} and the chance R@1 (100 / N). A tie with the own key counts against it."""
    sim = queries.float() @ keys.float().T  # (N, N)
    own = sim.diagonal()[:, None]  # (N, 1)
    rank = (sim >= own).sum(dim=1) - 1  # (N,): keys at least as similar as the own one, the own one excluded
    n = queries.shape[0]
    scores = {f"R@{k}": 100.0 * float((rank < k).float().mean()) for k in ks}
    scores["chance_R@1"] = 100.0 / n
    return scores


def retrieval_line(direction: str, scores: dict[str, float], pairs: int) -> str:
    """``retrieval audio->video: R@1 NN.N% R@5 NN.N% R@10 NN.N% (chance R@1 NN.N%) on N pairs``."""
    recalls = " ".join(f"R@{k} {scores[f'R@{k}']:.1f}%" for k in RECALL_AT)
    return f"retrieval {direction}: {recalls} (chance R@1 {scores['chance_R@1']:.1f}%) on {pairs} pairs"


def part_embeddings(model: MultiModalMAE, x: dict[str, Tensor], names: Sequence[str]) -> Tensor:
    """Each part in ``names`` alone, unmasked, mean-pooled, projected (with a contrastive term) and normalised,
    concatenated: (N, sum of E)."""
    rows = []
    for name in names:
        pooled, _ = model.pooled_alone(x, None, name)  # (N, D)
        rows.append(model.contrastive.embed(name, pooled) if model.contrastive else F.normalize(pooled, dim=-1))
    return torch.cat(rows, dim=1)


def retrieve_command(
    checkpoint: str | Path,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    parts: Sequence[str] | None = None,
    split: str = "heldout",
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int = 0,
    output: str | Path | None = "retrieval.json",
    figure: str | Path | None = None,
    queries: int = 4,
    progress: bool = False,
    registry: Registry | None = None,
) -> RetrievalReport:
    """``anymae retrieve``: recall of each part's items against another's on ``split`` of the checkpoint's data
    (or ``config``'s data section), after ``data.KEY=VALUE`` ``overrides``. ``parts``: the two parts to match
    (default: the model's first two). Writes the results as JSON at ``output`` and, with ``figure``, the top-5
    matches of the first ``queries`` items in each direction."""
    registry = resolve_registry(registry)
    model = load_model(checkpoint)
    model_cfg = resolve_model_config(model.config["model"], registry)
    if model_cfg.modality != COMPOSITE:
        raise ConfigError(f"anymae retrieve matches the parts of a composite model; {checkpoint} is a "
                          f"{model_cfg.modality} model")  # fmt: skip
    names = list(parts) if parts else list(model_cfg.parts)[:2]
    if len(names) != 2 or names[0] == names[1] or any(n not in model_cfg.parts for n in names):
        raise ConfigError(f"--parts names two different parts of the model ({', '.join(model_cfg.parts)}), got "
                          f"{','.join(names)}")  # fmt: skip
    data_raw = data_with_overrides(model.config.get("data") or {}, overrides, command="retrieve", config=config)
    data = resolve_part_data(model_cfg, data_raw, registry)
    modality = modality_for(model_cfg, registry=registry, parts=names)
    assert isinstance(modality, CompositeModality)
    section = {n: data[n] for n in names} | ({"stream": data["stream"]} if "stream" in data else {})
    paired = split_dataset(modality, section, None, split=split)  # folders, or shards holding every part
    if paired is None:
        raise DataError(f"the data of parts {', '.join(names)} has no {split} split to retrieve from")
    target = resolve_device(device)
    model = model.to(target).eval()
    widths = [_width(model, name) for name in names]
    with torch.no_grad():
        rows, index = compute_features(lambda x: part_embeddings(model, x, names), _Numbered(paired),
                                       batch_size=batch_size, device=target, num_workers=num_workers,
                                       progress=progress, desc="retrieval", skip_unreadable=True)  # fmt: skip
    a, b = rows.split(widths, dim=1)
    report = RetrievalReport(pairs=len(index), skipped=len(paired) - len(index))
    if report.pairs < 2:
        raise DataError(f"retrieval needs at least 2 readable pairs, {split} has {report.pairs}")
    report.directions[f"{names[0]}->{names[1]}"] = recall_at_k(a, b)
    report.directions[f"{names[1]}->{names[0]}"] = recall_at_k(b, a)
    if output is not None:
        report.output = Path(output)
        report.output.parent.mkdir(parents=True, exist_ok=True)
        summary = {"checkpoint": str(checkpoint), "split": split, "parts": names, "pairs": report.pairs,
                   "skipped": report.skipped, "directions": report.directions}  # fmt: skip
        report.output.write_text(json.dumps(summary, indent=2) + "\n")
    if figure is not None:
        report.figure = _figure(model, modality, data, paired, index, (a, b), names, Path(figure), queries)
    return report


def _width(model: MultiModalMAE, name: str) -> int:
    if model.contrastive is not None:
        proj = model.contrastive.proj[name]
        return proj.out_features if isinstance(proj, torch.nn.Linear) else model.encoder.embed_dim
    return model.encoder.embed_dim


class _Numbered(DatasetWithTraits):
    """A paired dataset's items as ``(inputs, i)``: the item number stands in for a label, so the features that
    come back say which items were readable."""

    traits = DatasetTraits()

    def __init__(self, paired: Dataset) -> None:
        self.paired = paired

    def __len__(self) -> int:
        return len(self.paired)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        return self.paired[i], i


_THUMB = 96  # thumbnail height in the figure, pixels


def _figure(
    model: MultiModalMAE,
    modality: CompositeModality,
    data: dict[str, Any],
    paired: Dataset,
    index: Tensor,
    reps: tuple[Tensor, Tensor],
    names: Sequence[str],
    path: Path,
    queries: int,
) -> Path:
    """For the first ``queries`` items in each direction: the query, then its 5 nearest items of the other part
    (green frame: its own partner, red: another item), each drawn by its modality as an unmasked input."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        thumbs: dict[tuple[str, int], Image.Image] = {}

        def thumb(name: str, i: int) -> Image.Image:
            if (name, i) not in thumbs:
                x = paired[int(index[i])][name][None]  # (1, ...)
                part = model.parts[name].cpu()
                patches = part.tokenizer.patchify(x)  # (1, L_p, P_p): the input itself as the "prediction"
                mask = torch.zeros(1, patches.shape[1])
                drawn = modality.modalities[name].render_reconstruction(
                    inputs=x, pred=patches, mask=mask, tokenizer=part.tokenizer, data=data[name],
                    path=Path(scratch) / f"{name}-{i}.png", caption="",
                )  # fmt: skip
                image = Image.open(drawn).convert("RGB")
                thumbs[(name, i)] = image.resize((max(1, image.width * _THUMB // image.height), _THUMB))
            return thumbs[(name, i)]

        for (q_name, k_name), (q, k) in (((names[0], names[1]), reps), ((names[1], names[0]), reps[::-1])):
            top = (q[:queries] @ k.T).topk(min(5, k.shape[0]), dim=1).indices  # (Q, 5)
            for i, matches in enumerate(top.tolist()):
                cells = [_framed(thumb(q_name, i), "white", f"{q_name} {i}")]
                cells += [_framed(thumb(k_name, j), "green" if j == i else "red", f"#{r + 1} {k_name} {j}")
                          for r, j in enumerate(matches)]  # fmt: skip
                rows.append(_hstack(cells))
    width = max(row.width for row in rows)
    sheet = Image.new("RGB", (width, sum(row.height for row in rows)), "white")
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    caption = caption_strip(f"{names[0]}->{names[1]} then {names[1]}->{names[0]}: query, its 5 nearest items "
                            "(green: its own partner)", width)  # fmt: skip
    out = np.concatenate([caption, np.asarray(sheet)], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out).save(path)
    return path


def _framed(image: Image.Image, colour: str, label: str) -> Image.Image:
    framed = Image.new("RGB", (image.width + 6, image.height + 20), "white")
    framed.paste(image, (3, 3))
    draw = ImageDraw.Draw(framed)
    draw.rectangle([0, 0, framed.width - 1, image.height + 5], outline=colour, width=3)
    draw.text((3, image.height + 6), label, fill="black")
    return framed


def _hstack(cells: list[Image.Image]) -> Image.Image:
    row = Image.new("RGB", (sum(c.width for c in cells), max(c.height for c in cells)), "white")
    x = 0
    for cell in cells:
        row.paste(cell, (x, 0))
        x += cell.width
    return row
