"""The house: the plugin kit's earlier import paths still work and say where the code lives."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("anymae.core.files", "anymae.core.data.files", "find_files"),
        ("anymae.core.figures", "anymae.core.model.figures", "add_caption"),
        ("anymae.core.masking", "anymae.core.model.masking", "keep_count"),
        ("anymae.core.formats", "anymae.core.weights.formats", "CheckpointFormat"),
    ],
)
def test_an_old_plugin_kit_path_warns_naming_the_new_one_and_gives_the_same_object(old, new, name):
    code = (
        "import warnings, importlib\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module('{old}')\n"
        "print([str(w.message) for w in caught if w.category is DeprecationWarning])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"{old} is deprecated: import from {new}" in out
    with pytest.warns(DeprecationWarning):
        sys.modules.pop(old, None)
        shim = importlib.import_module(old)
    assert getattr(shim, name) is getattr(importlib.import_module(new), name)


def test_the_new_paths_import_without_a_deprecation_warning():
    code = (
        "import warnings\nwarnings.simplefilter('error', DeprecationWarning)\n"
        "import anymae.core, anymae.core.cli, anymae.core.data, anymae.core.model.figures, anymae.core.model.masking\n"
        "import anymae.core.weights.formats, anymae.plugins, anymae.testing\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
