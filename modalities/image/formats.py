"""The image plugin's checkpoint formats: official MAE / timm ViT state dicts and Hugging Face ViTMAE folders.

- ``official-mae`` reads ``models_mae`` pre-training files, ``mae_finetuned_*`` / linear-probe classifiers and
  timm ``VisionTransformer`` state dicts (``.pth`` or ``.safetensors``), and writes ``anymae convert --to
  official`` (the official MAE layout, which AudioMAE shares) and ``--to timm`` (a state dict that loads with
  ``strict=True`` into timm's ``VisionTransformer``, its constructor written next to it as ``<name>.timm.json``).
  It is a fallback format: it matches any ViT with the official key names, so specific readers (AudioMAE) go first.
- ``hf-vitmae`` reads ``ViTMAEForPreTraining`` / ``ViTMAEModel`` folders (``config.json`` + weights).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from anymae.core.build.classifier import Classifier
from anymae.core.io.checkpoint import CheckpointError, read_checkpoint, read_safetensors
from anymae.core.model.mae import MaskedAutoencoder
from anymae.core.weights.convert import verify_reload
from anymae.core.weights.formats import (
    CheckpointFormat,
    Export,
    LoadOptions,
    build_and_load,
    build_classifier_and_load,
    read_hugging_face_folder,
    unwrap_state,
)
from anymae.plugins.manager import Registry

from .interop import (
    OFFICIAL_DECODER_HEADS,
    OFFICIAL_HEADS,
    from_hugging_face,
    from_official_classifier,
    from_official_mae,
    hugging_face_config,
    hugging_face_keys,
    is_official_classifier,
    is_official_mae,
    to_hugging_face,
    to_official_names,
)

__all__ = [
    "HuggingFaceViTMAEFormat",
    "OfficialMAEFormat",
    "build_timm",
    "official_state",
    "timm_kwargs",
    "timm_spec",
    "timm_state",
    "verify_timm",
]

TIMM_CLASS = "timm.models.vision_transformer.VisionTransformer"
TIMM_NORM_EPS = 1e-6  # timm's VisionTransformer default LayerNorm eps (= the official MAE's)
VERIFY_TOLERANCE = 1e-4  # max |timm - anymae| on the random check input (fp32; the same timm blocks run)


class OfficialMAEFormat(CheckpointFormat):
    """Official MAE and timm ViT state dicts (optionally under ``model`` / ``state_dict``): pre-trained MAEs,
    fine-tuned and linear-probe classifiers; writes the official and timm layouts."""

    fallback: ClassVar[bool] = True
    export_targets: ClassVar[tuple[str, ...]] = ("official", "timm")

    def detect(self, path: Path, payload: Any) -> bool:
        state = unwrap_state(payload)
        return state is not None and is_official_mae(state)

    def load(self, path: Path, payload: Any, *, options: LoadOptions, registry: Registry) -> MaskedAutoencoder:
        default_norm_pix = "visualize" not in path.name  # released mae_visualize_* models use raw pixels
        state = unwrap_state(payload) or {}
        model_raw, state, tables = _official(
            from_official_mae, path, state, options.num_heads, norm_pix_loss=default_norm_pix
        )
        return _build(model_raw, state, tables, path=path, options=options, registry=registry)

    def load_classifier(
        self, path: Path, payload: Any, *, num_heads: int | None, registry: Registry
    ) -> nn.Module | None:
        state = unwrap_state(payload)
        if state is None or not is_official_classifier(state):
            return None
        model_raw, head, state, stored = _official(from_official_classifier, path, state, num_heads)
        config = {"model": model_raw, "classifier": head}
        return build_classifier_and_load(config, state, stored, source=str(path), registry=registry)

    def export(self, model: nn.Module, *, target: str, dest: Path, registry: Registry) -> Export | None:
        """Any model with a 2-D Conv patch embedding (image, and audio: AudioMAE keeps the official names); other
        models are refused naming their tokenizer (this format is asked last)."""
        if target == "official":
            state, notes = official_state(model)
            return Export(state, notes, verify=partial(verify_reload, model, registry=registry))
        state, notes = timm_state(model)
        spec = timm_spec(model, dest)
        return Export(state, notes, wrap=False, sidecar=spec, verify=partial(_verify_timm_file, model, spec=spec))


class HuggingFaceViTMAEFormat(CheckpointFormat):
    """Hugging Face ``ViTMAEForPreTraining`` / ``ViTMAEModel`` folders. A fallback: every folder that no other
    format claims comes here, so its errors say what a ViTMAE folder needs. Writes such a folder for
    ``anymae export --hf DIR`` (an image MAE with its decoder; transformers builds and saves it)."""

    fallback: ClassVar[bool] = True
    export_targets: ClassVar[tuple[str, ...]] = ("hf",)

    def export(self, model: nn.Module, *, target: str, dest: Path, registry: Registry) -> Export | None:
        """``dest`` becomes a ``ViTMAEForPreTraining`` folder (``config.json`` + ``model.safetensors``) that
        ``transformers`` loads with ``from_pretrained``; None for models that are not image MAEs."""
        if not isinstance(model, MaskedAutoencoder) or model.config.get("model", {}).get("modality") != "image":
            return None
        try:
            import transformers
        except ImportError:
            raise CheckpointError("--hf writes a transformers folder: pip install transformers") from None
        config = hugging_face_config(model)
        state = to_hugging_face(model, hugging_face_keys(config))
        dest.mkdir(parents=True, exist_ok=True)
        transformers.ViTMAEConfig(**config).save_pretrained(dest)  # config.json
        save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
        return Export(state, [], wrap=False, sidecar=config, verify=partial(_verify_hugging_face, model))

    def detect(self, path: Path, payload: Any) -> bool:
        return payload is None and path.is_dir()

    def load(self, path: Path, payload: Any, *, options: LoadOptions, registry: Registry) -> MaskedAutoencoder:
        config, state = read_hugging_face_folder(path, model_type="vit_mae")
        model_raw, state, tables = from_hugging_face(config, state)
        return _build(model_raw, state, tables, path=path, options=options, registry=registry)


def _build(
    model_raw: dict[str, Any],
    state: dict[str, Tensor],
    tables: dict[str, Tensor],
    *,
    path: Path,
    options: LoadOptions,
    registry: Registry,
) -> MaskedAutoencoder:
    if options.norm_pix_loss is not None:
        model_raw["norm_pix_loss"] = options.norm_pix_loss
    return build_and_load(model_raw, state, tables, source=str(path), strict=options.strict, registry=registry)


def _official(convert: Any, path: Path, state: dict[str, Tensor], num_heads: int | None, **kwargs: Any) -> Any:
    """Run an official-layout importer, turning its ``ValueError`` into a :class:`CheckpointError` naming ``path``.

    A ``<name>.timm.json`` next to the file (written by ``anymae convert --to timm``) supplies what the tensors
    do not show: the heads (unless ``num_heads`` is given) and the LayerNorm eps.
    """
    spec_file = path.with_name(path.stem + ".timm.json")
    spec = json.loads(spec_file.read_text()) if spec_file.is_file() else {}
    try:
        result = convert(state, num_heads=num_heads or spec.get("kwargs", {}).get("num_heads"), **kwargs)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if "norm_eps" in spec:
        result[0]["norm_eps"] = spec["norm_eps"]
    return result


# --- official MAE -------------------------------------------------------------------------------------------
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
    decoder = model.decoder if isinstance(model, MaskedAutoencoder) else None  # a classifier has none
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
    decoder = model.decoder if isinstance(model, MaskedAutoencoder) else None  # a classifier has none
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
@runtime_checkable
class ProjectedPatches(Protocol):
    """A tokenizer whose patch embedding is one module ``proj`` (the image ViT's Conv2d, AudioMAE's): the
    official MAE and timm layouts hold it when it is a Conv2d with kernel = stride."""

    proj: nn.Module


def _patch_conv(model: nn.Module, layout: str) -> nn.Conv2d:
    """The tokenizer's ``proj``, which must be the image ViT's patch embedding: one Conv2d, kernel = stride."""
    tokenizer = model.tokenizer
    proj = tokenizer.proj if isinstance(tokenizer, ProjectedPatches) else None
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


def _verify_timm_file(model: nn.Module, path: Path, *, spec: dict[str, Any]) -> float:
    """A written timm file, loaded strictly into timm's model: the max abs difference of its outputs."""
    state = read_safetensors(path)[0] if path.suffix == ".safetensors" else read_checkpoint(path)
    return verify_timm(model, state, spec)


def _verify_hugging_face(model: MaskedAutoencoder, folder: Path) -> float:
    """The written folder loaded by ``transformers`` and run with anymae's model on the same images and noise:
    the max abs difference of the predictions (the masks must be equal)."""
    import transformers

    hf, info = transformers.ViTMAEForPreTraining.from_pretrained(folder, output_loading_info=True)
    hf.eval()
    wrong = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if wrong:
        raise CheckpointError(f"{folder}: transformers does not load every tensor: {wrong}")
    size, chans = hf.config.image_size, hf.config.num_channels
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, chans, size, size, generator=generator)
    noise = torch.rand(2, (size // hf.config.patch_size) ** 2, generator=generator)
    with torch.no_grad():
        out = hf(pixel_values=x, noise=noise)
        _, pred, mask = model.eval()(x, noise=noise)
    if not torch.equal(mask, out.mask):
        raise CheckpointError(f"{folder}: transformers draws other masks from the same noise")
    return (pred - out.logits).abs().max().item()
