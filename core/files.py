"""Deprecated path of the plugin kit: import from the module named in the warning below."""

import warnings

from anymae.core.data.files import *  # noqa: F403
from anymae.core.data.files import __all__  # noqa: F401

warnings.warn("anymae.core.files is deprecated: import from anymae.core.data.files", DeprecationWarning, stacklevel=2)
