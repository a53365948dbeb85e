"""anymae's built-in modalities; each is an ordinary plugin registered through the ``anymae`` entry points."""
