"""Deprecated path of the plugin kit: import from the module named in the warning below."""

import warnings

from anymae.core.model.masking import *  # noqa: F403
from anymae.core.model.masking import __all__  # noqa: F401

warnings.warn(
    "anymae.core.masking is deprecated: import from anymae.core.model.masking", DeprecationWarning, stacklevel=2
)
