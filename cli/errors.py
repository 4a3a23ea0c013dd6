"""How the CLI reports errors: one line on stderr and a stable exit code, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import click

from tracespec.errors import TracespecError, UsageError

EXIT_DIVERGED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INVALID_INPUT: Final = 3
EXIT_INCOMPLETE: Final = 4
"""``tracespec diff``: A and B agree where they were compared, but one of them is incomplete (a
recording cut short): what it lacks was not compared."""
EXIT_OUT_OF_MEMORY: Final = 5
"""The command ran out of memory: it says nothing about the traces (1 would read as "diverged")."""


class TracespecClickError(click.ClickException):
    """A :class:`TracespecError` as click reports it: ``error[reason]: message``, exit 3."""

    exit_code = EXIT_INVALID_INPUT

    def __init__(self, error: TracespecError) -> None:
        super().__init__(str(error).replace("\n", " "))
        self.reason = error.reason

    def format_message(self) -> str:
        return f"[{self.reason}] {self.message}"


class TracespecUsageClickError(TracespecClickError):
    """A :class:`UsageError`: the command was asked something it cannot do, exit 2."""

    exit_code = EXIT_USAGE


class OutOfMemoryClickError(click.ClickException):
    exit_code = EXIT_OUT_OF_MEMORY


@contextmanager
def report_errors() -> Iterator[None]:
    """Turn tracespec errors raised inside a command into click errors with the right exit code."""
    try:
        yield
    except UsageError as exc:
        raise TracespecUsageClickError(exc) from None
    except TracespecError as exc:
        raise TracespecClickError(exc) from None
    except MemoryError:
        raise OutOfMemoryClickError("out of memory; narrow the selection (--step, --rank, routes)") from None
    except BrokenPipeError:  # `tracespec show | head` is fine
        sys.stderr.close()
