"""Where raw configs come from: YAML files, the bundled configs, ``key.sub=value`` overrides and presets."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from anymae.core.config.errors import ConfigError

__all__ = ["apply_overrides", "apply_preset", "bundled_configs", "read_config_source"]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; configs mean the number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only


def bundled_configs() -> dict[str, str]:
    """Name -> first comment line of every YAML config shipped in ``anymae.configs``."""
    out = {}
    for entry in sorted(resources.files("anymae.configs").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            first = entry.read_text().splitlines()[0] if entry.read_text() else ""
            out[entry.name[: -len(".yaml")]] = first.lstrip("# ").strip()
    return out


def read_config_source(source: str | Path) -> tuple[str, dict[str, Any]]:
    """A path to a YAML file, or the name of a bundled config -> (name, raw mapping)."""
    path = Path(source)
    if path.is_file():
        text, name = path.read_text(), path.stem
    else:
        bundled = resources.files("anymae.configs") / f"{source}.yaml"
        if not bundled.is_file():
            names = list(bundled_configs())
            match = difflib.get_close_matches(str(source), names, n=1)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            raise ConfigError(
                f"config {str(source)!r} is neither a file nor a bundled config{hint}; bundled: {', '.join(names)}"
            )
        text, name = bundled.read_text(), str(source)
    try:
        raw = _yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {source}: invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {source}: the top level must be a mapping")
    raw.setdefault("name", name)
    return name, raw


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _yaml(text) if text else ""
    return raw


def data_with_overrides(
    stored: dict[str, Any], overrides: Sequence[str], *, command: str, config: str | None = None
) -> dict[str, Any]:
    """The ``data`` section a command that reads a checkpoint's data works on: the checkpoint's ``stored`` one, or
    ``config``'s (a YAML file or bundled config) when given, then ``data.KEY=VALUE`` ``overrides`` (any other
    key is refused, naming ``command``)."""
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"anymae {command} takes data.KEY=VALUE overrides only, got {bad[0]!r}")
    data = dict(stored or {}) if config is None else dict(read_config_source(config)[1].get("data") or {})
    return apply_overrides({"data": data}, overrides)["data"]


def apply_preset(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``overrides`` to a raw config: ``preset: NAME`` (in the file or as ``preset=NAME``) first applies the
    entry NAME of the config's ``presets`` section (a mapping of ``key.sub: value`` overrides), then the other
    overrides. A config written by a run keeps the applied preset's name and has no ``presets`` section: it is
    taken as it is. A preset the config does not define is refused, naming the ones it has."""
    chosen = [o for o in overrides if o.startswith("preset=")]
    raw = apply_overrides(raw, chosen)
    presets = raw.pop("presets", None) or {}
    preset = raw.get("preset")
    if preset is not None and (presets or chosen):
        if preset not in presets:
            raise ConfigError(
                f"config preset {preset!r} is not one of the config's presets: {', '.join(presets) or 'none'}"
            )
        apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in presets[preset].items()])
    return apply_overrides(raw, [o for o in overrides if not o.startswith("preset=")])
