"""A hermetic plugin registry for tests, and the pytest fixture that installs it for one test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from anymae.plugins import Registry, load_registry, manager

__all__ = ["anymae_registry", "hermetic_registry"]


def hermetic_registry(*plugins: object, builtins: bool = True) -> Registry:
    """A registry holding exactly ``plugins`` (modules or objects with hookimpls, or ``(name, plugin)``
    pairs) plus, with ``builtins``, anymae's modality-free built-ins (random masking, the pixel and
    norm-pix targets, the global decoder). Installed entry points and ``ANYMAE_*`` variables are ignored,
    and any plugin failure raises instead of warning."""
    named: list[tuple[str, object]] = []
    if builtins:
        from anymae.plugins import builtin

        named.append(("builtin", builtin))
    for plugin in plugins:
        if isinstance(plugin, tuple):
            named.append(plugin)
        else:
            name = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__name__
            named.append((name, plugin))
    return load_registry(entry_points=False, plugins=named, strict=True, disabled=())


@pytest.fixture
def anymae_registry() -> Iterator[Callable[..., Registry]]:
    """``anymae_registry(*plugins, builtins=True) -> Registry``: a :func:`hermetic_registry` that is also
    what ``anymae.plugins.get_registry()`` (and so ``anymae pretrain`` run in-process) returns until the
    test ends; the previous process-wide registry is restored afterwards."""
    saved = manager._REGISTRY

    def install(*plugins: object, builtins: bool = True) -> Registry:
        registry = hermetic_registry(*plugins, builtins=builtins)
        manager._REGISTRY = registry
        return registry

    yield install
    manager._REGISTRY = saved
