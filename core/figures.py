"""Deprecated path of the plugin kit: import from the module named in the warning below."""

import warnings

from anymae.core.model.figures import *  # noqa: F403
from anymae.core.model.figures import __all__  # noqa: F401

warnings.warn(
    "anymae.core.figures is deprecated: import from anymae.core.model.figures", DeprecationWarning, stacklevel=2
)
