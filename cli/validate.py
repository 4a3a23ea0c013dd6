"""``tracespec validate TRACE``: does a folder conform to the spec, and if not, why."""

from __future__ import annotations

import json

import click

from tracespec.cli.errors import report_errors
from tracespec.cli.locations import location_options
from tracespec.errors import TraceFormatError
from tracespec.storage import validate_trace


@click.command()
@click.argument("trace", type=click.Path(file_okay=False, path_type=str))
@click.option("--deep", is_flag=True, help="Also read every tensor and check its content hash (reads all data).")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as JSON on stdout: {valid: true, complete, ...} or {valid: false, reason, message}.",
)
@location_options
def validate(trace: str, deep: bool, as_json: bool) -> None:
    """Check that TRACE conforms to the tracespec format.

    Exit 0 if it does (an incomplete trace, whose writer crashed, is valid and says so);
    exit 3 with one line naming the reason code and the problem if it does not.

    \b
    Examples:
      tracespec validate runs/ref --deep
      tracespec validate s3://team-traces/ref
      python spec/v1/conformance/run_conformance.py -- tracespec validate --deep --json
    """
    with report_errors():
        try:
            report = validate_trace(trace, deep=deep)
        except TraceFormatError as exc:
            if as_json:  # the verdict on stdout for programs, the usual line on stderr for people
                click.echo(json.dumps({"valid": False, "reason": exc.reason, "message": str(exc)}, indent=2))
            raise
    if as_json:
        t = report.trace
        click.echo(
            json.dumps(
                {
                    "valid": True,
                    "complete": t.complete,
                    "format_version": t.manifest.format_version,
                    "ranks": t.ranks,
                    "steps": t.steps,
                    "missing_ranks": t.missing_ranks(),
                    "records": report.records,
                    "arrays": report.arrays,
                    "stored_bytes": report.stored_bytes,
                    "unreferenced_files": report.unreferenced,
                },
                indent=2,
            )
        )
    else:
        click.echo(report.summary())
