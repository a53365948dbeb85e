"""``anymae convert``: any checkpoint anymae reads -> an anymae, official MAE or timm ``VisionTransformer`` file.

The source is whatever :func:`~anymae.core.loading.load_any` opens (pre-trained MAEs and classifiers, anymae's
own files, plugin formats, official MAE / timm ViT state dicts, Hugging Face ViTMAE folders); the model it
builds is written back out in the target layout:

- ``anymae``: ``{"format": "anymae" | "anymae-classifier", "config", "model"}`` (``.pt``), or safetensors with
  the config in the metadata, as ``anymae export`` writes;
- ``official``: ``{"model": state_dict}`` with the official keys (reference section 5): encoder-only, or
  full when the model has a decoder; classifiers in the ``mae_finetuned_*`` (or linear-probe) layout;
- ``timm``: a state dict that loads with ``strict=True`` into ``timm.models.vision_transformer.VisionTransformer``
  built with :func:`timm_kwargs` (also written next to the file as ``<name>.timm.json``).

Every output is checked before the command returns (unless ``verify=False``): anymae and official files are
read back and must hold exactly the same tensors; timm files are loaded strictly into timm's model, which must
give the same features (or logits) as anymae's on a random input.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError, export_safetensors, read_checkpoint, read_safetensors, write_checkpoint
from .classify import Classifier
from .interop import OFFICIAL_DECODER_HEADS, OFFICIAL_HEADS, to_official_names
from .loading import CHECKPOINT_FORMAT, CLASSIFIER_FORMAT, load_any

__all__ = ["TARGETS", "ConvertResult", "convert", "official_state", "timm_kwargs", "timm_state"]

TARGETS = ("anymae", "official", "timm")
TIMM_CLASS = "timm.models.vision_transformer.VisionTransformer"
TIMM_NORM_EPS = 1e-6  # timm's VisionTransformer default LayerNorm eps (= the official MAE's)
VERIFY_TOLERANCE = 1e-4  # max |timm - anymae| on the random check input (fp32; the same timm blocks run)


@dataclass
class ConvertResult:
    """What ``convert`` wrote: the file, its layout, the model kind, and notes for the user."""

    path: Path
    target: str
    kind: str  # "mae" or "classifier"
    num_tensors: int
    num_values: int
    timm: dict[str, Any] | None = None  # the timm constructor spec (--to timm)
    timm_spec_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None  # timm vs anymae on the check input (--to timm)


def convert(
    source: str | Path,
    dest: str | Path,
    *,
    to: str = "anymae",
    file_format: str | None = None,
    num_heads: int | None = None,
    verify: bool = True,
    registry: Any = None,
) -> ConvertResult:
    """Read ``source`` and write it to ``dest`` in the layout ``to`` (``anymae``, ``official`` or ``timm``).

    ``file_format`` is ``pt`` or ``safetensors`` (default: ``safetensors`` for a ``.safetensors`` ``dest``);
    ``num_heads`` is needed for official / timm sources whose width is not an official one.
    """
    if to not in TARGETS:
        raise ValueError(f"--to {to!r}: expected one of {', '.join(TARGETS)}")
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


def _write(model: nn.Module, dest: Path, *, to: str, file_format: str, registry: Any) -> ConvertResult:
    """Write ``model`` to ``dest`` in the layout ``to`` (and the timm spec next to it for ``timm``)."""
    kind = "classifier" if isinstance(model, Classifier) else "mae"
    if to == "anymae":
        state, notes = _write_anymae(model, dest, file_format, kind), []
    elif to == "official":
        state, notes = _plugin_export(model, registry) or official_state(model)
        _write_state({"model": state} if file_format == "pt" else state, dest, file_format)
    else:
        state, notes = timm_state(model)
        _write_state(state, dest, file_format)
    if model.config.get("classifier", {}).get("learned_pos_embed"):
        notes = [*notes, "pos_embed is learned (official fine-tuning trains it): kept, not the fixed sin-cos table"]
    result = ConvertResult(
        path=dest,
        target=to,
        kind=kind,
        num_tensors=len(state),
        num_values=sum(t.numel() for t in state.values()),
        notes=notes,
    )
    if to == "timm":
        result.timm = timm_spec(model, dest)
        result.timm_spec_path = dest.with_name(dest.stem + ".timm.json")
        result.timm_spec_path.write_text(json.dumps(result.timm, indent=2) + "\n")
    return result


def _verify(model: nn.Module, result: ConvertResult, *, registry: Any) -> None:
    """timm: strict load into timm's model and the same outputs; anymae / official: read back, same tensors."""
    if result.target == "timm":
        state = _read_flat(result.path)
        result.max_abs_diff = verify_timm(model, state, result.timm)
        return
    exported = _plugin_export(model, registry) if result.target == "official" else None
    if exported is None:
        _verify_reload(model, result.path, registry=registry)
        return
    # A plugin's layout may not record what a reader needs (VideoMAE: the clip shape, the decoder's heads):
    # the check is that the file holds exactly the tensors the plugin's export gave.
    written, expected = _read_flat(result.path), exported[0]
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


# --- official MAE -------------------------------------------------------------------------------------------
def _plugin_export(model: nn.Module, registry: Any) -> tuple[dict[str, Tensor], list[str]] | None:
    """The first registered checkpoint format whose optional ``export`` takes ``model`` (e.g. VideoMAE's
    layout for a video model), or None: the official MAE layout is the default."""
    if registry is None:
        from anymae.plugins import get_registry

        registry = get_registry()
    for entry in registry.checkpoint_formats.values():
        export = getattr(entry.obj, "export", None)
        written = export(model) if export is not None else None
        if written is not None:
            return written
    return None


def official_state(model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """An anymae MAE or classifier -> (official-layout state dict, notes on what the layout does not record).

    The official files store the position tables (``pos_embed``, ``decoder_pos_embed``) with the CLS row, so
    they are written from the model's tables; classifiers take the ``mae_finetuned_*`` layout (no ``norm``,
    ``fc_norm`` + ``head``) or the linear probe's (``norm``, ``head.0`` BatchNorm + ``head.1`` Linear).
    """
    _patch_conv(model, "the official MAE layout")
    state, pos_embed = _split_position_table(model)
    renamed, unmapped = to_official_names(state)
    if unmapped:
        raise CheckpointError(
            f"{len(unmapped)} keys have no name in the official MAE layout: {unmapped[:10]} "
            "(the official layout is an image ViT: patch_embed, cls_token, blocks, norm, the global decoder)"
        )
    renamed["pos_embed"] = pos_embed
    decoder = getattr(model, "decoder", None)
    if decoder is not None:
        table = decoder.get_buffer("pos_embed").detach().clone()  # (1, [1 +] L, D_dec)
        if table.shape[1] == pos_embed.shape[1] - 1:  # a decoder that keeps no CLS slot (e.g. AudioMAE's local one)
            table = torch.cat([torch.zeros_like(table[:, :1]), table], dim=1)
        renamed["decoder_pos_embed"] = table
    return renamed, _official_notes(model)


def _official_notes(model: nn.Module) -> list[str]:
    """What a reader of the official layout will assume differently from this model (heads, eps, target)."""
    notes = []
    dim, heads = model.encoder.embed_dim, model.encoder.blocks[0].attn.num_heads
    if OFFICIAL_HEADS.get(dim) != heads:
        notes.append(f"the official layout does not record heads: read it back with --num-heads {heads}")
    decoder = getattr(model, "decoder", None)
    if decoder is not None and decoder.blocks and decoder.blocks[0].attn.num_heads != OFFICIAL_DECODER_HEADS:
        notes.append(
            f"the decoder has {decoder.blocks[0].attn.num_heads} heads; readers of the official layout "
            f"assume {OFFICIAL_DECODER_HEADS}"
        )
    eps = model.encoder.blocks[0].norm1.eps
    if eps != TIMM_NORM_EPS:
        notes.append(f"LayerNorm eps is {eps:g}; readers of the official layout assume {TIMM_NORM_EPS:g}")
    model_cfg = model.config.get("model", {})
    if decoder is not None and not model_cfg.get("norm_pix_loss", False):
        notes.append(
            "a raw-pixel model: official files do not record the target; name the file mae_visualize_*.pth "
            "(or load it with norm_pix_loss=False)"
        )
    return notes


# --- timm ---------------------------------------------------------------------------------------------------
def timm_kwargs(model: nn.Module) -> dict[str, Any]:
    """The ``VisionTransformer`` keyword arguments that rebuild ``model``'s encoder (and head), read off the
    modules, not the config: a 2-D Conv patch embedding (kernel = stride), timm blocks, a CLS token or none."""
    tokenizer, encoder = model.tokenizer, model.encoder
    proj = _patch_conv(model, "timm's VisionTransformer")
    (gh, gw), (kh, kw) = tokenizer.grid, proj.kernel_size
    block, dim = encoder.blocks[0], encoder.embed_dim
    classifier = isinstance(model, Classifier)
    avg_pool = model.global_pool if classifier else encoder.cls_token is None
    return {
        "img_size": gh * kh if (gh * kh, kh) == (gw * kw, kw) else [gh * kh, gw * kw],
        "patch_size": kh if kh == kw else [kh, kw],
        "in_chans": proj.in_channels,
        "embed_dim": dim,
        "depth": len(encoder.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "num_classes": model.head.out_features if classifier else 0,
        "global_pool": "avg" if avg_pool else "token",
        "fc_norm": bool(classifier and model.global_pool),  # classifiers pool then fc_norm; the MAE encoder norms
        "class_token": encoder.cls_token is not None,
    }


def timm_spec(model: nn.Module, weights: Path) -> dict[str, Any]:
    """The JSON written next to a timm export: class, kwargs, LayerNorm eps, and the Python that rebuilds it."""
    kwargs = timm_kwargs(model)
    eps = model.encoder.blocks[0].norm1.eps
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    imports = ["from timm.models.vision_transformer import VisionTransformer"]
    if eps != TIMM_NORM_EPS:
        imports.append("import functools, torch")
        args += f", norm_layer=functools.partial(torch.nn.LayerNorm, eps={eps!r})"
    if weights.suffix == ".safetensors":
        imports.append("from safetensors.torch import load_file")
        load = f"load_file({weights.name!r})"
    else:
        imports.append("import torch")
        load = f"torch.load({weights.name!r}, weights_only=True)"
    lines = [*dict.fromkeys(imports), f"model = VisionTransformer({args})", f"model.load_state_dict({load})"]
    python = "\n".join(lines)  # load_state_dict is strict by default
    return {"architecture": TIMM_CLASS, "kwargs": kwargs, "norm_eps": eps, "weights": weights.name, "python": python}


def timm_state(model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """An anymae MAE or classifier -> (timm ``VisionTransformer`` state dict, notes).

    The MAE decoder has no place in timm's model and is left out (named in the notes); the linear probe's
    BatchNorm1d(affine=False) is folded into the head (eval mode: the same logits).
    """
    _patch_conv(model, "timm's VisionTransformer")
    state, pos_embed = _split_position_table(model)
    left_out = sorted(k for k in state if k.startswith("decoder."))
    renamed, unmapped = to_official_names({k: v for k, v in state.items() if not k.startswith("decoder.")})
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} keys have no place in timm's VisionTransformer: {unmapped[:10]}")
    renamed["pos_embed"] = pos_embed
    notes = []
    if left_out:
        notes.append(
            f"left out the decoder ({len(left_out)} tensors: {', '.join(left_out[:3])}, ...): timm's ViT is the "
            "encoder only; use --to official or --to anymae to keep it"
        )
    if "head.0.running_mean" in renamed:
        renamed.update(_fold_batch_norm(renamed, eps=model.head_bn.eps))
        for key in [k for k in renamed if k.startswith(("head.0.", "head.1."))]:
            del renamed[key]
        notes.append("folded the linear probe's BatchNorm1d(affine=False) into head (the same eval-mode logits)")
    return renamed, notes


def _fold_batch_norm(state: dict[str, Tensor], *, eps: float) -> dict[str, Tensor]:
    """head.1(BN(x)) with BN(x) = (x - mean) / sqrt(var + eps) -> one Linear: W' = W / s, b' = b - W' mean."""
    scale = (state["head.0.running_var"].double() + eps).rsqrt()  # (D,)
    weight = state["head.1.weight"].double() * scale[None, :]  # (K, D)
    bias = state["head.1.bias"].double() - weight @ state["head.0.running_mean"].double()  # (K,)
    return {"head.weight": weight.float(), "head.bias": bias.float()}


def build_timm(spec: dict[str, Any]) -> nn.Module:
    """timm's ``VisionTransformer`` from a spec of :func:`timm_spec` (weights not initialised: load them next)."""
    from timm.models.vision_transformer import VisionTransformer

    norm = {} if spec["norm_eps"] == TIMM_NORM_EPS else {"norm_layer": partial(nn.LayerNorm, eps=spec["norm_eps"])}
    return VisionTransformer(**spec["kwargs"], **norm, weight_init="skip")


def verify_timm(model: nn.Module, state: dict[str, Tensor], spec: dict[str, Any]) -> float:
    """Load ``state`` strictly into timm's model and compare its features (MAE: ``forward_features``, every
    token) or logits (classifier) with ``model``'s on a seeded random input; returns the max abs difference."""
    timm_model = build_timm(spec).eval()
    try:
        timm_model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # torch names the missing / unexpected keys and the shape mismatches
        raise CheckpointError(f"the export does not load into VisionTransformer({spec['kwargs']}): {exc}") from None
    kwargs = spec["kwargs"]
    size = kwargs["img_size"] if isinstance(kwargs["img_size"], list) else [kwargs["img_size"]] * 2
    x = torch.randn(2, kwargs["in_chans"], *size, generator=torch.Generator().manual_seed(0))  # (N, C, H, W)
    with torch.no_grad():
        if isinstance(model, Classifier):
            ours, theirs = model(x), timm_model(x)  # (N, K)
        else:
            ours, theirs = model.encode(x), timm_model.forward_features(x)  # (N, num_prefix + L, D)
    diff = (ours - theirs).abs().max().item()
    if not diff <= VERIFY_TOLERANCE:
        raise CheckpointError(
            f"timm's VisionTransformer with the exported weights differs from the anymae model by {diff:.3g} "
            f"(tolerance {VERIFY_TOLERANCE:g}): the tokenizer or blocks do more than timm's"
        )
    return diff


# --- shared -------------------------------------------------------------------------------------------------
def _patch_conv(model: nn.Module, layout: str) -> nn.Conv2d:
    """The tokenizer's ``proj``, which must be the image ViT's patch embedding: one Conv2d, kernel = stride."""
    proj = getattr(model.tokenizer, "proj", None)
    if not isinstance(proj, nn.Conv2d) or proj.kernel_size != proj.stride or proj.padding != (0, 0):
        modality = model.config.get("model", {}).get("modality", "?")
        raise CheckpointError(
            f"{layout} embeds 2-D patches with one Conv2d (kernel = stride), but this {modality!r} model's "
            f"tokenizer.proj is {proj!r}; --to anymae keeps every modality"
        )
    return proj


def _split_position_table(model: nn.Module) -> tuple[dict[str, Tensor], Tensor]:
    """(the model's state without ``encoder.pos_embed``, the encoder's table (1, num_prefix + L, D)): fixed or
    learned, it is stored in the official and timm layouts."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k != "encoder.pos_embed"}
    return state, model.encoder.pos_embed.detach().cpu().clone()


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


def _verify_reload(model: nn.Module, dest: Path, *, registry: Any) -> None:
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
