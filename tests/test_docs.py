"""The plugin docs stay true: hooks documented, docs/plugins.md's reference current, every hook tested."""

from __future__ import annotations

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


def test_every_hook_is_named_in_a_test():
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name)
    untested = [f.__name__ for f in hookspec_functions() if f.__name__ not in tests]
    assert not untested, f"hooks that no test in tests/ mentions: {', '.join(untested)}"
