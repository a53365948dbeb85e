"""The anymae plugin system: pluggy hook specifications, the entry-point loader and the registry."""

from .hookspecs import (
    anymae_register_checkpoint_formats,
    anymae_register_commands,
    anymae_register_decoders,
    anymae_register_masking,
    anymae_register_modalities,
    anymae_register_targets,
)
from .manager import (
    ENTRY_POINT_GROUP,
    DuplicateNameError,
    PluginError,
    PluginInfo,
    Registry,
    get_registry,
    hookimpl,
    load_registry,
    reset_registry,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "DuplicateNameError",
    "PluginError",
    "PluginInfo",
    "Registry",
    "anymae_register_checkpoint_formats",
    "anymae_register_commands",
    "anymae_register_decoders",
    "anymae_register_masking",
    "anymae_register_modalities",
    "anymae_register_targets",
    "get_registry",
    "hookimpl",
    "load_registry",
    "reset_registry",
]
