"""The one error type of configs: a bad key, type or value, reported before any work starts."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type or an out-of-range value."""
