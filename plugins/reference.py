"""The hook reference for plugin authors, generated from the hookspec docstrings in ``hookspecs.py``.

``docs/plugins.md`` embeds this output between markers, and a test keeps the two identical. Regenerate with::

    python -m anymae.plugins.reference
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from . import hookspecs

__all__ = ["hook_reference_markdown", "hookspec_functions"]


def hookspec_functions() -> list[Callable[..., Any]]:
    """Every function in ``anymae.plugins.hookspecs`` marked ``@hookspec``, in the file's order."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"  # the attribute pluggy's HookspecMarker sets
    return sorted(
        (f for _, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, marker)),
        key=lambda f: f.__code__.co_firstlineno,
    )


def _signature(func: Callable[..., Any]) -> str:
    """``name(arg: Annotation, ...) -> Return`` as written in the source (annotations are strings there)."""

    def text(annotation: Any) -> str:
        return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)

    sig = inspect.signature(func)
    params = ", ".join(
        p.name if p.annotation is inspect.Parameter.empty else f"{p.name}: {text(p.annotation)}"
        for p in sig.parameters.values()
    )
    returns = "" if sig.return_annotation is inspect.Signature.empty else f" -> {text(sig.return_annotation)}"
    return f"{func.__name__}({params}){returns}"


def hook_reference_markdown() -> str:
    """One Markdown section per hook: its name, its signature and its whole docstring."""
    parts = []
    for func in hookspec_functions():
        doc = inspect.getdoc(func) or "(undocumented)"
        parts.append(f"### `{func.__name__}`\n\n```python\n{_signature(func)}\n```\n\n{doc}\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(hook_reference_markdown(), end="")
