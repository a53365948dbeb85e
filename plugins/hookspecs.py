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

__all__ = ["PROJECT_NAME", "anymae_register_masking", "anymae_register_modalities", "hookspec"]

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
    strategy is uniform noise with ``len_keep = int(L * (1 - mask_ratio))``. ``name`` is what configs put
    in ``model.masking``; duplicates are an error naming both plugins.

    Example::

        @hookimpl
        def anymae_register_masking(register):
            register("random", random_masking)
    """
