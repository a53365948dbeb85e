"""How the command line reports a user error: one ``anymae COMMAND: error: ...`` line on stderr."""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(exc: BaseException) -> str:
    """The error's message on one line. DataLoader workers re-raise with the worker's traceback in the message:
    keep its last line."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in text:
        return lines[-1].split(": ", 1)[-1]
    return " ".join(line.strip() for line in lines)
