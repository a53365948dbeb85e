"""Deprecated path of the plugin kit: import from the module named in the warning below."""

import warnings

from anymae.core.weights.formats import *  # noqa: F403
from anymae.core.weights.formats import __all__  # noqa: F401

warnings.warn(
    "anymae.core.formats is deprecated: import from anymae.core.weights.formats", DeprecationWarning, stacklevel=2
)
