"""Loading plugins: entry points -> pluggy -> a registry of named modalities, masking strategies, targets
and decoders.

The registry is the only global state in anymae, built lazily on first use. Environment switches:
``ANYMAE_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point name, ``ANYMAE_STRICT_PLUGINS=1`` makes a
plugin that fails to load fatal, ``ANYMAE_TRACE_PLUGINS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs

if TYPE_CHECKING:  # the core imports this module; these names are for annotations only
    from anymae.core.model.modality import Modality
    from anymae.core.model.targets import Target

__all__ = [
    "COMPOSITE",
    "ENTRY_POINT_GROUP",
    "DuplicateNameError",
    "PluginError",
    "PluginInfo",
    "Registry",
    "get_registry",
    "hookimpl",
    "load_registry",
    "reset_registry",
    "resolve_registry",
]

# ``model.modality`` of a model over several modalities (``model.parts``): a core model, not a registered modality.
COMPOSITE = "composite"
ENTRY_POINT_GROUP = "anymae"
hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT_NAME)

# (hook name, what a registered thing is called in messages: the key of its table in Registry.tables)
_REGISTRATION_HOOKS = (
    ("anymae_register_modalities", "modality"),
    ("anymae_register_masking", "masking strategy"),
    ("anymae_register_targets", "target"),
    ("anymae_register_decoders", "decoder"),
    ("anymae_register_segmentation_heads", "segmentation head"),
    ("anymae_register_checkpoint_formats", "checkpoint format"),
    ("anymae_register_commands", "command"),
)
# What a registered object must have, per kind (besides being callable, for the callable kinds).
_REQUIRED_METHODS = {
    "target": ("__call__", "to_pixels"),
    "checkpoint format": ("detect", "load"),
    "command": ("add_arguments", "run"),
}


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered something invalid."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same name: always fatal, since either choice would be a silent guess."""


@dataclass
class PluginInfo:
    """What ``anymae plugins`` shows about one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    status: str = "loaded"  # loaded | disabled | broken
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    registers: list[str] = field(default_factory=list)  # e.g. "modality:image"


@dataclass
class Registered:
    obj: Any
    plugin: str


def _closest(name: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry:
    """Named modalities, masking strategies, targets and decoders, and which plugin registered each."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.plugins: dict[str, PluginInfo] = {}
        self.modalities: dict[str, Registered] = {}
        self.masking: dict[str, Registered] = {}
        self.targets: dict[str, Registered] = {}
        self.decoders: dict[str, Registered] = {}
        self.segmentation_heads: dict[str, Registered] = {}
        self.checkpoint_formats: dict[str, Registered] = {}
        self.commands: dict[str, Registered] = {}
        self.tables = {"modality": self.modalities, "masking strategy": self.masking, "target": self.targets,
                       "decoder": self.decoders, "checkpoint format": self.checkpoint_formats,
                       "command": self.commands, "segmentation head": self.segmentation_heads}  # fmt: skip

    def modality(self, name: str) -> Modality:
        """The registered :class:`anymae.core.Modality` called ``name``."""
        if name == COMPOSITE:
            raise KeyError(
                f"{name!r} is a model over several modalities (model.parts), not one registered modality: this "
                "command does not take composite models yet (pretrain does; in Python, MultiModalMAE.encode gives "
                "features of any of its parts)"
            )
        return self._lookup("modality", self.modalities, name)

    def masking_strategy(self, name: str) -> Callable[..., Any]:
        """The registered masking strategy called ``name``."""
        return self._lookup("masking strategy", self.masking, name)

    def target(self, name: str) -> Target:
        """The registered reconstruction target called ``name``."""
        return self._lookup("target", self.targets, name)

    def decoder(self, name: str) -> Callable[..., Any]:
        """The registered decoder builder called ``name``."""
        return self._lookup("decoder", self.decoders, name)

    def segmentation_head(self, name: str) -> Callable[..., Any]:
        """The registered segmentation head builder called ``name``."""
        return self._lookup("segmentation head", self.segmentation_heads, name)

    def _lookup(self, kind: str, table: dict[str, Registered], name: str) -> Any:
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise KeyError(f"unknown {kind} {name!r}; registered: {known}{_closest(name, table)}")
        return table[name].obj


def _entry_points() -> list[metadata.EntryPoint]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) not in seen:  # one distribution seen twice on sys.path
            seen.add((ep.name, ep.value))
            unique.append(ep)
    return unique


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def load_registry(
    *,
    entry_points: bool = True,
    plugins: Sequence[tuple[str, object]] = (),
    strict: bool | None = None,
    disabled: Iterable[str] | None = None,
) -> Registry:
    """Build a fresh registry from the ``anymae`` entry points and/or explicit ``(name, plugin)`` pairs.

    A plugin that fails to import, implements an unknown hook or raises while registering is reported
    with a warning naming it, its distribution and version, and the others still load (``strict`` makes
    it fatal). A name registered twice raises :class:`PluginError` naming both plugins.
    """
    strict = _env_flag("ANYMAE_STRICT_PLUGINS") if strict is None else strict
    if disabled is None:
        disabled = [n.strip() for n in os.environ.get("ANYMAE_DISABLE_PLUGINS", "").split(",") if n.strip()]
    blocked = set(disabled)

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    if _env_flag("ANYMAE_TRACE_PLUGINS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    registry = Registry(pm)

    candidates: list[tuple[str, Callable[[], object], PluginInfo]] = []
    if entry_points:
        for ep in _entry_points():
            dist = ep.dist
            info = PluginInfo(ep.name, dist.name if dist else None, dist.version if dist else None)
            candidates.append((ep.name, ep.load, info))
    for name, obj in plugins:
        candidates.append((name, lambda obj=obj: obj, PluginInfo(name, None, None)))

    for name, load, info in candidates:
        registry.plugins[name] = info
        if name in blocked:
            info.status = "disabled"
            continue
        try:
            _register_plugin(pm, name, load())
        except Exception as exc:  # a broken plugin must not take the others down
            _mark_broken(info, f"failed to load: {type(exc).__name__}: {exc}", strict, exc)
            continue
        info.hooks = sorted(h.name for h in pm.get_hookcallers(pm.get_plugin(name)) or [])
    pm.check_pending()

    for hook_name, kind in _REGISTRATION_HOOKS:
        caller: pluggy.HookCaller = getattr(pm.hook, hook_name)  # pluggy's HookRelay names each hook an attribute
        for impl in caller.get_hookimpls():
            _run_registration(registry, hook_name, impl, registry.tables[kind], kind, strict)
    return registry


def _register_plugin(pm: pluggy.PluginManager, name: str, plugin: object) -> None:
    if pm.get_plugin(name) is not None or pm.is_registered(plugin):
        raise PluginError(f"a plugin named {name!r} (or the same module) is already registered")
    pm.register(plugin, name=name)
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec():
            pm.unregister(plugin)
            known = [n for n in dir(hookspecs) if n.startswith("anymae_")]
            raise PluginError(
                f"implements unknown hook {caller.name!r}{_closest(caller.name, known)}; "
                f"known hooks: {', '.join(known)}"
            )


def _mark_broken(info: PluginInfo, why: str, strict: bool, exc: BaseException | None = None) -> None:
    info.status, info.error = "broken", why
    where = f" (distribution {info.distribution} {info.version})" if info.distribution else ""
    message = f"anymae plugin {info.name!r}{where} {why}"
    if strict:
        raise PluginError(message) from exc
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _run_registration(
    registry: Registry, hook_name: str, impl: pluggy.HookImpl, table: dict[str, Registered], kind: str, strict: bool
) -> None:
    """Call one plugin's registration hook and commit what it registered only if it finished without
    raising (so a failing plugin can be reported alone while the others load)."""
    plugin = impl.plugin_name
    info = registry.plugins[plugin]
    if info.status != "loaded":
        return
    added: list[tuple[str, Any]] = []

    def register(*args: Any) -> None:
        name, obj = _unpack_registration(kind, plugin, args)
        owner = table.get(name) or next((Registered(o, plugin) for n, o in added if n == name), None)
        if owner is not None:
            raise DuplicateNameError(
                f"{kind} {name!r} is registered by both plugin {owner.plugin!r} and plugin {plugin!r}"
            )
        added.append((name, obj))

    try:
        # Called per plugin rather than through pm.hook, so pluggy's tracing is fed by hand.
        registry.pm.trace.root.get("hook")(f"{hook_name} (plugin {plugin!r})", {"register": register})
        impl.function(**{arg: register for arg in impl.argnames})
    except DuplicateNameError:
        raise
    except Exception as exc:
        _mark_broken(info, f"raised while registering: {type(exc).__name__}: {exc}", strict, exc)
        return
    for name, obj in added:
        table[name] = Registered(obj, plugin)
        info.registers.append(f"{kind.split()[0]}:{name}")


def _unpack_registration(kind: str, plugin: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    if kind == "modality":
        from anymae.core.model.modality import Modality

        if len(args) != 1 or not isinstance(args[0], Modality):
            raise PluginError(f"register() takes one anymae.core.Modality instance, got {args!r}")
        return args[0].name, args[0]
    methods = _REQUIRED_METHODS.get(kind, ("__call__",))
    if len(args) != 2 or not isinstance(args[0], str):
        raise PluginError(f"register() takes (name: str, {kind}), got {args!r}")
    # The registration check itself: it names each method the plugin's object lacks.
    missing = [m for m in methods if not callable(getattr(args[1], m, None))]
    if missing:
        raise PluginError(f"{kind} {args[0]!r} has no {' or '.join(missing)} method (needs {', '.join(methods)})")
    return args[0], args[1]


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load_registry()
    return _REGISTRY


def resolve_registry(registry: Registry | None = None) -> Registry:
    """``registry``, or the process-wide one when None: the one place a public entry point that takes an optional
    registry (``build_model``, ``load_model``, ``pretrain``, ...) falls back to the installed plugins."""
    return registry if registry is not None else get_registry()


def reset_registry() -> None:
    """Forget the process-wide registry (after installing a plugin, or in tests)."""
    global _REGISTRY
    _REGISTRY = None
