"""The ``tracespec`` command line: a thin layer over the Python API.

Exit codes: 0 same / valid, 1 diverged, 2 usage error, 3 unreadable or invalid input.
Machine output (``--json``) goes to stdout; logs and progress to stderr.
"""

from __future__ import annotations

from typing import Any

import click

from tracespec import __version__
from tracespec.cli.convert import convert
from tracespec.cli.cp import cp
from tracespec.cli.diff import diff
from tracespec.cli.errors import EXIT_INVALID_INPUT, report_errors
from tracespec.cli.report import report
from tracespec.cli.show import show
from tracespec.cli.validate import validate

__all__ = ["EXIT_INVALID_INPUT", "cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tracespec")
def cli() -> None:
    """Record what a model computes, and find where two runs diverge.

    \b
    A trace is a folder (Zarr v3 tensors + Arrow tables, spec/v1) that any machine can read,
    local or at a URL (s3://, gs://, az://; --storage-option, --cache, docs/storage.md).
    Typical use:
      tracespec show runs/ref              the module tree with shapes, dtypes, statistics
      tracespec validate runs/ref          does the folder conform to the spec?
      tracespec diff runs/ref runs/port    where does B diverge from A, and who introduced it?
      tracespec diff A B --html r.html     ... and a report to open in a browser (offline)
      tracespec convert padiff DUMP OUT    a PaDiff dump (or: convert checkpoint FILE OUT) as a trace
      tracespec diff a.bin b.safetensors   what changed between two checkpoints
      tracespec cp runs/ref s3://b/ref     copy a trace to or from an object store, checking it

    Exit codes: 0 ok, 1 diverged, 2 usage error, 3 unreadable or invalid input.
    """


cli.add_command(convert)
cli.add_command(cp)
cli.add_command(diff)
cli.add_command(report)
cli.add_command(show)
cli.add_command(validate)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``tracespec`` console script."""
    with report_errors():
        return cli.main(args=argv, prog_name="tracespec", standalone_mode=True)
