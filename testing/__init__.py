"""anymae.testing: what a plugin author's tests need.

- :func:`check_modality` runs the contract every modality must satisfy (anymae's own tests run it over
  every registered modality); :func:`check_composite` the same for a composite of several modalities.
- The pytest fixture ``anymae_registry`` (registered with pytest through the ``pytest11`` entry point, so it
  is available in any test once anymae is installed) builds a hermetic plugin registry from the plugins you
  name, ignores installed entry points and ``ANYMAE_*`` switches, and makes it the process-wide registry for
  the duration of one test.
"""

from .contract import check_composite, check_modality
from .fixtures import hermetic_registry

__all__ = ["check_composite", "check_modality", "hermetic_registry"]
