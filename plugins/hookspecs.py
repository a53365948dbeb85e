"""The anymae hook specifications: this file is the reference for plugin authors.

A plugin is any module (or object) with functions marked ``@anymae.plugins.hookimpl`` whose names are
among the hooks below. Install it as a distribution with an entry point in the ``anymae`` group::

    [project.entry-points.anymae]
    my_plugin = "my_package.anymae_plugin"

anymae's own modalities are registered exactly this way. Registration hooks receive a ``register``
callback and return nothing. Hooks run when a model or dataset is *built*, never inside ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__all__ = [
    "PROJECT_NAME",
    "anymae_register_checkpoint_formats",
    "anymae_register_commands",
    "anymae_register_decoders",
    "anymae_register_masking",
    "anymae_register_modalities",
    "anymae_register_segmentation_heads",
    "anymae_register_targets",
    "hookspec",
]

PROJECT_NAME = "anymae"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def anymae_register_modalities(register: Callable[[Any], None]) -> None:
    """Register modalities: call ``register(modality)`` once per modality.

    ``modality`` is an instance of :class:`anymae.core.Modality` (a subclass of it): it has a unique
    ``name`` (the ``model.modality`` value in configs), the dataclasses that validate its ``tokenizer``
    and ``data`` config sections, and builds its tokenizer, datasets, input loader and reconstruction
    figure. Registering a name that another plugin already registered is an error naming both plugins.

    Example::

        @hookimpl
        def anymae_register_modalities(register):
            register(ImageModality())
    """


@hookspec
def anymae_register_masking(register: Callable[[str, Any], None]) -> None:
    """Register masking strategies: call ``register(name, strategy)`` once per strategy.

    ``strategy(*, batch, grid, mask_ratio, device, generator=None) -> (noise, len_keep)`` returns a
    float ``noise (N, L)`` and how many tokens to keep; the core keeps the ``len_keep`` tokens with the
    smallest noise (a stable sort, so ties keep token order) and removes the rest. The paper's ``random``
    strategy is uniform noise with ``len_keep = int(L * (1 - mask_ratio))``. The keywords are
    :class:`anymae.core.model.masking.MaskingArgs` (a strategy may declare them once as ``**args:
    Unpack[MaskingArgs]``); a strategy's own named keywords are its options, set in ``model.masking_options``.
    ``name`` is what configs put in ``model.masking``; duplicates are an error naming both plugins.

    Example::

        @hookimpl
        def anymae_register_masking(register):
            register("random", random_masking)
    """


@hookspec
def anymae_register_targets(register: Callable[[str, Any], None]) -> None:
    """Register reconstruction targets: call ``register(name, target)`` once per target.

    ``target`` is an object with two methods (see :class:`anymae.core.model.targets.Target`):
    ``target(patches, *, tokenizer) -> (N, L, P)`` turns the tokenizer's patches ``(N, L, P)`` into what the
    decoder regresses, and ``target.to_pixels(pred, patches, *, tokenizer) -> (N, L, P)`` maps a prediction
    back to patch values for figures, using the true patches' statistics. ``name`` is what configs put in
    ``model.target``. Built-ins: ``pixels`` and ``norm_pix`` (the paper's per-patch normalization;
    ``model.norm_pix_loss: true`` is the official spelling of ``target: norm_pix``).

    Example::

        @hookimpl
        def anymae_register_targets(register):
            register("per_channel", PerChannelTarget())
    """


@hookspec
def anymae_register_decoders(register: Callable[[str, Any], None]) -> None:
    """Register decoders: call ``register(name, builder)`` once per decoder.

    ``builder(*, in_dim, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, out_dim, pos_table, norm_layer,
    grid, num_prefix, **options) -> nn.Module`` builds the decoder from the ``model.decoder_*`` config values
    (the keywords are :class:`anymae.core.model.decoder.DecoderArgs`: a builder may declare them once as
    ``**args: Unpack[DecoderArgs]``); ``pos_table`` is the tokenizer's ``(L, embed_dim)`` table (no prefix
    slot), ``num_prefix`` is 1 with a CLS token and 0 without, and ``options`` come from
    ``model.decoder_options`` (checked against the builder's named keywords before anything is built). A decoder
    that fills removed tokens with one learned mask token can subclass
    :class:`anymae.core.model.decoder.MaskTokenDecoder` and write only ``forward_blocks``, as ``global``, ``videomae``
    and ``local`` do. The module's ``forward(latent, ids_restore, select=None)`` maps the
    encoder output ``(N, num_prefix + L_vis, in_dim)`` to predictions ``(N, L, out_dim)`` in grid order, or,
    given token ids ``select (N, L_sel)``, to the predictions of those tokens only ``(N, L_sel, out_dim)``
    (``model.pred_masked_only``). A learned mask token is called ``mask_token``; the model applies the
    official initialisation to it and to every Linear and LayerNorm. ``name`` is what configs put in
    ``model.decoder``; the built-in is ``global`` (the paper's decoder).

    Example::

        @hookimpl
        def anymae_register_decoders(register):
            register("local", LocalWindowDecoder)
    """


@hookspec
def anymae_register_segmentation_heads(register: Callable[[str, Any], None]) -> None:
    """Register dense prediction heads for ``anymae segment``: call ``register(name, builder)`` once per head.

    ``builder(*, in_channels, num_classes, patch_size, **options) -> SegmentationHead`` builds an
    :class:`anymae.core.model.heads.SegmentationHead`: ``in_channels`` is the encoder width ``D``, ``patch_size``
    the tokenizer's ``p``; ``options`` are the head's own named keywords, set from ``segment.channels`` and
    ``segment.aux_weight`` when the config gives them (a key the builder does not take is refused when the config
    is read). The head declares ``num_maps`` (how many block maps it reads: ``segment.layers`` must name that many
    blocks; the default is the last block for 1, BEiT's evenly spaced blocks for 4), ``aux_weight`` and
    ``patch_size``; its ``forward(maps)`` returns ``(logits, aux_logits or None)`` at the input's resolution.
    ``name`` is what configs put in ``segment.head``. Built-ins: ``linear`` (a 1x1 convolution on the last
    block) and ``upernet`` (BEiT's ADE20K head, which the MAE paper used).

    Example::

        @hookimpl
        def anymae_register_segmentation_heads(register):
            register("upernet", UperNetHead)
    """


@hookspec
def anymae_register_checkpoint_formats(register: Callable[[str, Any], None]) -> None:
    """Register checkpoint formats that ``load_model`` (and so ``anymae visualize``, ``export``, ``convert``,
    ``eval`` and ``model.init_from``) can open: call ``register(name, fmt)`` once per format.

    ``fmt`` is an :class:`anymae.core.weights.formats.CheckpointFormat` (subclass it); each modality owns the formats of
    its architecture (the image plugin: ``official-mae`` for official MAE / timm ViT state dicts, ``hf-vitmae``
    for Hugging Face ViTMAE folders; video: ``videomae``; audio: ``audiomae``). It declares:

    - ``detect(path, payload) -> bool``: whether a source is in this format; ``path`` is the file or folder
      given, ``payload`` what the file holds (``torch.load(weights_only=True)``, or a ``.safetensors`` state
      dict), ``None`` for a folder;
    - ``load(path, payload, *, options, registry) -> MaskedAutoencoder``: the converted model;
      ``options`` (:class:`anymae.core.weights.formats.LoadOptions`) has ``strict`` (refuse missing or unexpected keys,
      naming them), ``num_heads`` (a hint the tensors do not hold, ``--num-heads``) and ``norm_pix_loss``
      (overrides the target the format assumes);
    - optionally ``load_classifier(path, payload, *, num_heads, registry)``: the classifier the source holds,
      or None (``anymae eval`` and ``convert`` of fine-tuned files);
    - optionally ``export_targets`` (``anymae convert --to`` names) and ``export(model, *, target, dest,
      registry) -> Export | None``: the model in that layout, or None when it is not of this format's kind;
    - ``fallback = True`` for a layout that others extend: fallbacks are asked after every other format.

    Formats are asked after anymae's own files, in registration order, fallbacks last. The core's kit
    (:mod:`anymae.core.weights.formats`) has what formats share: ``unwrap_state``, ``rename_keys``, ``count_blocks``,
    ``infer_heads``, ``read_hugging_face_folder``, ``build_and_load`` (with the fixed-table check) and
    ``build_classifier_and_load``. A plain object with just ``detect`` and ``load(path, payload, *, strict,
    registry)`` is accepted too (it gets no hints, classifiers or exports).

    Example::

        @hookimpl
        def anymae_register_checkpoint_formats(register):
            register("videomae", VideoMAEFormat())
    """


@hookspec
def anymae_register_commands(register: Callable[[str, Any], None]) -> None:
    """Register ``anymae`` subcommands: call ``register(name, command)`` once per command.

    ``command`` has a one-line ``help`` string, ``add_arguments(parser)`` (an ``argparse`` parser to fill)
    and ``run(args) -> int`` (the exit code). A command may not shadow a built-in one.

    Example::

        @hookimpl
        def anymae_register_commands(register):
            register("audio-stats", AudioStatsCommand())
    """
