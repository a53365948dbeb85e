"""Weights of one model into another that differs in input channels, input size or patch size.

Used by pre-training's ``model.init_from`` (:mod:`anymae.core.weights.init_from`) and by classifiers built from a
pre-trained MAE (:func:`anymae.core.build.classifier.build_classifier`). Every tensor of the target is either loaded as
it is, adapted (and the adaptation named), or new (kept at the target's initialisation, with the reason);
anything else is an error naming the keys and shapes, raised before a weight is written.

The adaptations:
    channels: the patch embedding's input channels, 3 -> 1 and 3 -> N as timm's ``adapt_input_conv`` does (sum;
        repeat and scale by 3/N), or any N -> M by picking a file channel for each model channel (``bands``).
    patch size: the patch embedding resampled with FlexiViT's pseudo-inverse (timm's ``resample_patch_embed``),
        so that a patch and its resized version give the same token (exact when enlarging; when shrinking by an
        integer factor, the resize is k x k averaging, whose pseudo-inverse sums each k x k block of the kernel:
        exact for every patch that is constant on those blocks, a constant patch included). The decoder head
        (D_dec -> P values per patch) is rebuilt: new.
    input size: fixed sin-cos position tables are never stored (anymae recomputes them for the grid), so they are
        rebuilt and named; a learned table (an official fine-tuned encoder) is resized bicubically as the official
        ``interpolate_pos_embed`` (timm's ``resample_abs_pos_embed``, no antialiasing), prefix rows kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import adapt_input_conv
from torch import Tensor, nn

from anymae.core.io.checkpoint import CheckpointError
from anymae.core.model.tokenizer import Tokenizer

__all__ = [
    "InitReport",
    "adapt_channels",
    "make_pos_embed_learned",
    "resample_kernel",
    "resample_learned_pos_embed",
    "transfer_weights",
]


@dataclass
class InitReport:
    """What a transfer did with each tensor of the target; ``as_dict`` is the plain data that runs record."""

    source: str
    loaded: list[str] = field(default_factory=list)  # copied as they are
    adapted: dict[str, str] = field(default_factory=dict)  # key -> the adaptation
    new: dict[str, str] = field(default_factory=dict)  # key -> why it keeps the target's initialisation
    notes: list[str] = field(default_factory=list)  # what changed without a tensor (rebuilt tables, config)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": list(self.loaded),
            "adapted": dict(self.adapted),
            "new": dict(self.new),
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        """A short account for the log: counts of loaded tensors, every adaptation, new tensors grouped by
        reason, the notes."""
        parts = sorted({key.split(".")[0] for key in self.loaded})
        out = [f"loaded {len(self.loaded)} tensors as they are ({', '.join(parts) or 'none'})"]
        out += [f"adapted {key}: {how}" for key, how in self.adapted.items()]
        by_reason: dict[str, list[str]] = {}
        for key, reason in self.new.items():
            by_reason.setdefault(reason, []).append(key)
        out += [f"new {_short(keys)}: {reason}" for reason, keys in by_reason.items()]
        return out + self.notes

    @property
    def changed(self) -> bool:
        """Anything other than a plain load happened."""
        return bool(self.adapted or self.new or self.notes)


def transfer_weights(
    source: nn.Module,
    target: nn.Module,
    *,
    source_name: str,
    bands: Sequence[int] | None = None,
    drop: tuple[str, ...] = (),
) -> InitReport:
    """Load ``source``'s weights into ``target`` (both with a ``tokenizer`` and the same key names), adapting
    what the adaptations cover; raise :class:`CheckpointError` naming every other mismatch, before any write.

    ``bands``: for each input channel of ``target``, the ``source`` channel whose patch-embedding weights it
    takes. ``drop``: key prefixes of ``source`` the target has no place for by design (a classifier drops the
    ``decoder.``). A ``decoder.`` the source lacks (encoder-only files) is new.
    """
    theirs = {k: v for k, v in source.state_dict().items() if not k.startswith(drop)}
    ours = target.state_dict()
    report = InitReport(source_name)
    src_tok, dst_tok = source.tokenizer, target.tokenizer
    kernels = {  # the tokenizer's patch embeddings: (D, C, *kernel)
        f"tokenizer.{name}.weight" for name, m in dst_tok.named_modules() if isinstance(m, nn.modules.conv._ConvNd)
    }
    file_has_decoder = any(k.startswith("decoder.") for k in theirs)
    state: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, want in ours.items():
        have = theirs.get(key)
        if have is None:
            if key.startswith("decoder.") and not file_has_decoder:
                report.new[key] = "the file has no decoder: official initialisation"
            else:
                problems.append(f"{key} {tuple(want.shape)}: not in the file")
            continue
        problem = _transfer_tensor(key, have, want, src_tok, dst_tok, kernel=key in kernels, bands=bands,
                                   state=state, report=report)  # fmt: skip
        if problem is not None:
            problems.append(problem)
    problems += [f"{k} {tuple(v.shape)}: in the file, not in the model" for k, v in theirs.items() if k not in ours]
    if problems:
        raise CheckpointError(
            f"{source_name} cannot initialise this model: {len(problems)} tensors differ and no adaptation covers "
            f"them: {'; '.join(problems[:12])}{'; ...' if len(problems) > 12 else ''}"
        )
    if tuple(src_tok.grid) != tuple(dst_tok.grid) and "encoder.pos_embed" not in ours:
        report.notes.append(
            f"fixed sin-cos position tables rebuilt for the token grid {tuple(dst_tok.grid)} (the file's: "
            f"{tuple(src_tok.grid)})"
        )
    target.load_state_dict(state, strict=False)
    return report


def _transfer_tensor(
    key: str,
    have: Tensor,
    want: Tensor,
    src_tok: Tokenizer,
    dst_tok: Tokenizer,
    *,
    kernel: bool,
    bands: Sequence[int] | None,
    state: dict[str, Tensor],
    report: InitReport,
) -> str | None:
    """Put the file's tensor ``have`` for ``key`` into ``state`` (as it is, or adapted to ``want``'s shape) or
    mark it new in ``report``; the mismatch no adaptation covers, as one line, else None. ``kernel``: ``key`` is
    a patch embedding of the tokenizer, (D, C, *kernel)."""
    if kernel and (tuple(have.shape) != tuple(want.shape) or bands is not None):
        try:
            state[key], report.adapted[key] = _adapt_kernel(have, tuple(want.shape), bands)
        except ValueError as exc:
            return f"{key}: file {tuple(have.shape)} vs model {tuple(want.shape)}: {exc}"
    elif tuple(have.shape) == tuple(want.shape):
        state[key] = have
        report.loaded.append(key)
    elif key.startswith("decoder.") and _is_patch_head(have, want, src_tok.patch_dim, dst_tok.patch_dim):
        report.new[key] = (
            f"decoder head rebuilt for {dst_tok.patch_dim} values per patch (the file's: {src_tok.patch_dim}): "
            "official initialisation"
        )
    elif key == "encoder.pos_embed":  # learned tables only: fixed ones are not in state dicts
        try:
            prefix = want.shape[1] - dst_tok.num_tokens
            state[key] = resample_learned_pos_embed(have, src_tok.grid, dst_tok.grid, prefix)
            report.adapted[key] = f"learned table resized bicubically from grid {src_tok.grid} to {dst_tok.grid}"
        except ValueError as exc:
            return f"{key}: file {tuple(have.shape)} vs model {tuple(want.shape)}: {exc}"
    else:
        return f"{key}: file {tuple(have.shape)} vs model {tuple(want.shape)}"
    return None


def _adapt_kernel(weight: Tensor, shape: tuple[int, ...], bands: Sequence[int] | None) -> tuple[Tensor, str]:
    """A patch embedding (D, C, *kernel) -> ``shape``: channels first, then the kernel; the adaptation named."""
    if weight.ndim != len(shape) or weight.shape[0] != shape[0]:
        raise ValueError("not the same kind of patch embedding")
    done = []
    if bands is not None or weight.shape[1] != shape[1]:
        weight, how = adapt_channels(weight, shape[1], bands)
        done.append(how)
    if tuple(weight.shape[2:]) != shape[2:]:
        weight, how = resample_kernel(weight, shape[2:])
        done.append(how)
    return weight, "; ".join(done)


def adapt_channels(weight: Tensor, in_chans: int, bands: Sequence[int] | None = None) -> tuple[Tensor, str]:
    """weight (D, C, *kernel) -> (D, in_chans, *kernel), and what was done.

    With ``bands``, model channel i takes file channel ``bands[i]`` (a band selection: no rescaling). Without,
    timm's ``adapt_input_conv`` (its ``base_chans`` the file's C): 1 channel sums the file's; from 3 channels, N
    repeats them and scales by 3/N (so a grey N-band input gives the tokens of a grey RGB image); other channel
    counts need ``bands``."""
    chans = weight.shape[1]
    if bands is not None:
        bands = list(bands)
        if len(bands) != in_chans:
            raise ValueError(f"the band list {bands} has {len(bands)} entries, the model {in_chans} input channels")
        if min(bands) < 0 or max(bands) >= chans:
            raise ValueError(f"the band list {bands} picks outside the file's channels 0..{chans - 1}")
        return weight[:, bands].clone(), f"input channels {bands} of the file's {chans} (band selection)"
    if in_chans != 1 and chans != 3:
        raise ValueError(
            f"{chans} -> {in_chans} input channels: only 3 -> N and N -> 1 adapt by themselves; pick the file's "
            f"channel for each of the model's with a band list (model.init_bands / finetune.init_bands)"
        )
    flat = weight.reshape(*weight.shape[:2], -1, 1)  # (D, C, prod(kernel), 1): timm's function takes OIHW
    adapted = adapt_input_conv(in_chans, flat, base_chans=chans).reshape(weight.shape[0], in_chans, *weight.shape[2:])
    rule = "summed" if in_chans == 1 else f"repeated, scaled by 3/{in_chans}"
    return adapted, f"input channels {chans} -> {in_chans}: {rule} (timm adapt_input_conv)"


def resample_kernel(weight: Tensor, size: Sequence[int]) -> tuple[Tensor, str]:
    """weight (D, C, [t,] p, p) -> (D, C, [t,] *size[-2:]): FlexiViT's pseudo-inverse resize of the spatial kernel.

    Enlarging (or a non-integer ratio): timm's ``resample_patch_embed`` (bicubic resize, antialiased). Shrinking by
    an integer factor k: the resize is k x k averaging, whose pseudo-inverse is k^2 times the average, i.e. the sum
    of each k x k block (timm's function with a bilinear resize gives the same for k = 2; its antialiased default
    does not keep a constant patch's token, 16 -> 8 moves it by about 10%)."""
    old, new = tuple(weight.shape[2:]), tuple(size)
    if len(old) != len(new) or old[:-2] != new[:-2]:
        raise ValueError(f"only the spatial patch size can be resampled: kernel {old} -> {new}")
    flat = weight.reshape(weight.shape[0], -1, *old[-2:])  # (D, C*t, p, p)
    factors = {o / n for o, n in zip(old[-2:], new[-2:], strict=True)}
    if len(factors) == 1 and (k := factors.pop()) > 1 and k == int(k):
        resampled = F.avg_pool2d(flat.float(), int(k)).mul(k * k).to(weight.dtype)
        rule = f"the sum of each {int(k)}x{int(k)} block (pseudo-inverse of {int(k)}x{int(k)} averaging)"
    else:
        resampled = resample_patch_embed(flat, list(new[-2:]))
        rule = "timm resample_patch_embed (FlexiViT pseudo-inverse of a bicubic resize)"
    out = resampled.reshape(*weight.shape[:2], *new)
    return out, f"patch {'x'.join(map(str, old[-2:]))} -> {'x'.join(map(str, new[-2:]))}: {rule}"


def resample_learned_pos_embed(
    table: Tensor, old_grid: Sequence[int], new_grid: Sequence[int], num_prefix: int
) -> Tensor:
    """A learned position table (1, num_prefix + L, D) -> the same for ``new_grid``: the prefix rows kept, the
    grid part resized bicubically (align_corners=False, no antialiasing) as the official ``interpolate_pos_embed``."""
    if len(old_grid) != 2 or len(new_grid) != 2:
        raise ValueError(f"a learned table is resized over 2-D grids only, not {tuple(old_grid)} -> {tuple(new_grid)}")
    if table.shape[1] != num_prefix + math.prod(old_grid):
        raise ValueError(f"the table has {table.shape[1]} rows, not {num_prefix} + {math.prod(old_grid)} (grid)")
    return resample_abs_pos_embed(
        table, list(new_grid), old_size=list(old_grid), num_prefix_tokens=num_prefix, antialias=False
    )


def make_pos_embed_learned(encoder: nn.Module) -> None:
    """Replace the encoder's fixed table (a non-persistent buffer) by a parameter ``pos_embed`` of its shape, to be
    loaded (official fine-tuning trains the table)."""
    fixed = encoder.get_buffer("pos_embed")
    del encoder.pos_embed
    encoder.pos_embed = nn.Parameter(torch.zeros_like(fixed))  # (1, num_prefix + L, D)


def _is_patch_head(have: Tensor, want: Tensor, src_patch_dim: int, dst_patch_dim: int) -> bool:
    """A decoder tensor whose shapes differ only where the file has its P values per patch and the model its own:
    the prediction head (e.g. ``decoder.pred``)."""
    if have.ndim != want.ndim or src_patch_dim == dst_patch_dim:
        return False
    pairs = zip(have.shape, want.shape, strict=True)
    return all(a == b or (a == src_patch_dim and b == dst_patch_dim) for a, b in pairs)


def _short(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
