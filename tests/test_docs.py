"""The plugin docs stay true: hooks documented, docs/plugins.md's reference current, every hook exercised by a
test (implemented with ``@hookimpl`` or called, not merely named)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from anymae.plugins.reference import hook_reference_markdown, hookspec_functions

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- hook-reference:start -->", "<!-- hook-reference:end -->"


def test_every_hookspec_has_a_docstring():
    undocumented = [f.__name__ for f in hookspec_functions() if not (f.__doc__ or "").strip()]
    assert hookspec_functions(), "no hookspecs found in anymae.plugins.hookspecs"
    assert not undocumented, f"hookspecs without a docstring: {', '.join(undocumented)}"


def test_docs_hook_reference_matches_the_hookspecs():
    text = (ROOT / "docs" / "plugins.md").read_text()
    match = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), text, flags=re.S)
    assert match, f"docs/plugins.md has no {START} ... {END} section"
    assert match.group(1) == hook_reference_markdown(), (
        "docs/plugins.md's hook reference is out of date: replace the text between the markers with the "
        "output of `python -m anymae.plugins.reference`"
    )


def _hooks_exercised(source: str) -> set[str]:
    """Names of the functions ``source`` implements with ``@hookimpl`` (the registry calls them when a test
    registers the plugin) or calls itself (``pm.hook.name(...)``); comments and strings do not count."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            decorators = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
            if any(getattr(d, "id", getattr(d, "attr", None)) == "hookimpl" for d in decorators):
                names.add(node.name)
        elif isinstance(node, ast.Call):
            names.add(getattr(node.func, "id", getattr(node.func, "attr", None)))
    return names


def test_every_hook_is_implemented_or_called_in_a_test():
    exercised = set().union(
        *(_hooks_exercised(p.read_text()) for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name)
    )
    untested = [f.__name__ for f in hookspec_functions() if f.__name__ not in exercised]
    assert not untested, f"hooks that no test in tests/ implements (@hookimpl) or calls: {', '.join(untested)}"


def test_a_hook_named_only_in_a_comment_or_a_string_is_not_exercised():
    source = """
# anymae_register_commands is not tested here
NAME = "anymae_register_targets"
def anymae_register_decoders(register):  # not a hookimpl: nothing registers it
    pass
class Plugin:
    @hookimpl
    def anymae_register_masking(self, register):
        pass
pm.hook.anymae_register_modalities(register=print)
"""
    hooks = {f.__name__ for f in hookspec_functions()}
    assert _hooks_exercised(source) & hooks == {"anymae_register_masking", "anymae_register_modalities"}
