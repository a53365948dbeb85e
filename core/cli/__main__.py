"""``python -m anymae.core.cli``: the ``anymae`` command (torchrun launches it this way)."""

import sys

from anymae.core.cli import main

sys.exit(main())
