"""Command-line plumbing shared by ``run_search.py`` and ``retrain.py``: one-line usage errors
(exit status 2), the exit-status wrapper, the output-folder check, and dataclass fields that carry
their own command-line help (``setting``) and become options (``add_option``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Parser", "UsageError", "add_option", "check_writable", "exit_status", "setting"]


class UsageError(Exception):
    """A problem with a command line or its run folder: one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``UsageError`` line instead of usage + message."""

    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see --help)")


def check_writable(out: Path) -> None:
    """``out`` exists as a folder we can write in, or can be made: else a ``UsageError``."""
    probe_at = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not probe_at.is_dir():
        raise UsageError(
            f"the output folder {out} cannot be made: {probe_at} is a file; choose another --out"
        )
    try:
        with tempfile.TemporaryFile(dir=probe_at):
            pass
    except OSError as error:
        raise UsageError(
            f"cannot write to the output folder {out} ({error.strerror}); choose another --out"
        ) from None


def exit_status(
    prog: str,
    work: Callable[[], object],
    *,
    usage: tuple[type[Exception], ...] = (),
    failures: tuple[type[Exception], ...] = (),
) -> int:
    """Run a command line's ``work`` and return its exit status: 0 when it ends; 2 with one
    ``prog: error:`` line for a ``UsageError`` or one of ``usage``; 1 with one line for one of
    ``failures``; 130 on Ctrl-C, saying that rerunning resumes."""
    try:
        work()
    except (UsageError, *usage) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except failures as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def setting(
    default: Any, help: str, *, flag: str | None = None, defines_search: bool = False, **extra: Any
) -> Any:
    """A field with its command-line ``help`` (``%(default)s`` allowed) and ``flag``
    (default: ``--`` and the name with dashes)."""
    metadata = {"help": help, "flag": flag, "defines_search": defines_search, **extra}
    return dataclasses.field(default=default, metadata=metadata)


def add_option(
    parser: argparse.ArgumentParser,
    name: str,
    hint: Any,
    default: Any,
    help: str,
    choices: tuple[str, ...] | None = None,
) -> None:
    """The option ``--name-with-dashes`` for a dataclass field of type ``hint``: a flag pair
    for a bool (``--no-NAME`` when it defaults to true), else a typed value."""
    flag = "--" + name.replace("_", "-")
    if hint is bool:
        if default:
            parser.add_argument(
                f"--no-{name.replace('_', '-')}", dest=name, action="store_false", help=help
            )
        else:
            parser.add_argument(flag, dest=name, action="store_true", help=help)
        return
    kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    parser.add_argument(flag, dest=name, type=kind, default=default, choices=choices, help=help)
