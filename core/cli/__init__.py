"""The ``anymae`` command line: pretrain, finetune, linprobe, eval, knn, embed, visualize, export, convert, plugins,
configs, and plugin commands.

Argument parsing only: :mod:`.parser` builds the argparse tree, each command's handler (:mod:`.commands`) calls the
one function of its room that does the work and prints the result, and :func:`main` maps a user error to one
``anymae COMMAND: error: ...`` line and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from functools import partial

from anymae.core.cli.errors import one_line
from anymae.core.cli.parser import OVERRIDE_COMMANDS, build_parser
from anymae.core.config import ConfigError
from anymae.core.data.samples import BadSampleError, DataError
from anymae.core.io.checkpoint import CheckpointError
from anymae.core.train.run import PREEMPTED_EXIT_CODE, NonFiniteLossError, PreemptedError

__all__ = ["main"]

# What a user can cause (a bad config, unreadable data or checkpoint, a diverging run): one line, exit 1.
USER_ERRORS = (ConfigError, DataError, BadSampleError, CheckpointError, NonFiniteLossError, KeyError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `pretrain CONFIG --no-progress a.b=1`: argparse leaves overrides after an option unparsed
        if args.command not in OVERRIDE_COMMANDS or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if not args.command:
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = partial(_one_line_warning, args.command)
        return _run(args)


def _one_line_warning(command: str, message: Warning | str, *_: object, **__: object) -> None:
    """A warning during a command (a skipped file, a recipe mismatch) as one ``anymae COMMAND: warning:`` line."""
    print(f"anymae {command}: warning: {one_line(Exception(str(message)))}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except PreemptedError as exc:
        print(f"anymae {args.command}: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except USER_ERRORS as exc:
        print(f"anymae {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
