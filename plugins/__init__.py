"""The anymae plugin system: pluggy hook specifications, the entry-point loader and the registry."""

# Each module's ``__all__`` is the one list of its public names; this package re-exports them.
from . import hookspecs, manager
from .hookspecs import *  # noqa: F403
from .manager import *  # noqa: F403

# The hook specifications (not pluggy's marker or the project name) and everything the loader exports.
__all__ = [*(name for name in hookspecs.__all__ if name.startswith("anymae_register_")), *manager.__all__]
