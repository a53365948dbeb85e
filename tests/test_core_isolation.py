"""The core is modality-agnostic (STYLE habit 2): it never imports ``anymae.modalities``."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import anymae.core

CORE_DIR = Path(anymae.core.__file__).parent
CORE_PACKAGE = "anymae.core"
FORBIDDEN = "anymae.modalities"


def _modalities_imported_by(code: str, **env: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the ``anymae.modalities*`` modules it leaves in sys.modules."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANYMAE_")}
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env={**clean, **env}
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_anymae_core_imports_no_modality():
    assert _modalities_imported_by("import anymae.core") == []


def test_importing_the_cli_plugins_package_and_builtin_plugin_imports_no_modality():
    code = "import anymae.core, anymae.core.cli, anymae.plugins, anymae.plugins.builtin, anymae.plugins.hookspecs"
    assert _modalities_imported_by(code) == []


def test_loading_only_the_builtin_plugin_imports_no_modality():
    code = (
        "import anymae.plugins.builtin\n"
        "from anymae.plugins import load_registry\n"
        "registry = load_registry(entry_points=False, plugins=[('builtin', anymae.plugins.builtin)])\n"
        "assert list(registry.masking) == ['random'] and registry.modalities == {}\n"
        "assert sorted(registry.targets) == ['norm_pix', 'pixels'] and list(registry.decoders) == ['global']"
    )
    assert _modalities_imported_by(code) == []


def test_a_disabled_modality_plugin_is_never_imported():
    code = "from anymae.plugins import get_registry\nassert get_registry().plugins['image'].status == 'disabled'"
    imported = _modalities_imported_by(code, ANYMAE_DISABLE_PLUGINS="image")
    assert not [m for m in imported if m.startswith("anymae.modalities.image")], imported


def _module_name(path: Path) -> str:
    rel = path.relative_to(CORE_DIR).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([CORE_PACKAGE, *parts])


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative imports resolved, plus string
    arguments of ``importlib.import_module``/``__import__`` calls."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from anymae import modalities` imports anymae.modalities too
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            found.append((node.lineno, module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def test_no_core_file_imports_anymae_modalities():
    files = sorted(CORE_DIR.rglob("*.py"))
    assert len(files) > 5, f"expected the core sources under {CORE_DIR}"
    offenders = [
        f"{path.relative_to(CORE_DIR.parent)}:{line} imports {module}"
        for path in files
        for line, module in _imported_modules(path)
        if module == FORBIDDEN or module.startswith(FORBIDDEN + ".")
    ]
    assert offenders == []


def test_import_scanner_catches_relative_and_dynamic_modality_imports(tmp_path, monkeypatch):
    fake_core = tmp_path / "core"
    fake_core.mkdir()
    source = (
        "from ..modalities.image import ImageModality\n"
        "from anymae import modalities\n"
        "import importlib\n"
        "importlib.import_module('anymae.modalities.image')\n"
    )
    (fake_core / "model.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "CORE_DIR", fake_core)
    modules = {m for _, m in _imported_modules(fake_core / "model.py")}
    assert {"anymae.modalities.image", "anymae.modalities", "anymae.modalities.image.ImageModality"} <= modules
