"""anymae's built-in, modality-free plugin: the paper's random masking.

Registered through the ``anymae`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anymae.core.masking import random_masking

from .manager import hookimpl


@hookimpl
def anymae_register_masking(register: Callable[[str, Any], None]) -> None:
    register("random", random_masking)
