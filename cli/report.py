"""``tracespec report VERDICT -o report.html``: the HTML report of a saved verdict."""

from __future__ import annotations

from pathlib import Path

import click

from tracespec.cli.errors import report_errors
from tracespec.cli.locations import location_options
from tracespec.report import write_html
from tracespec.report.verdict_file import load_verdict
from tracespec.storage import load_trace


@click.command()
@click.argument("verdict", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The HTML file to write (self-contained, opens offline).",
)
@click.option(
    "--traces",
    nargs=2,
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    metavar="A B",
    help="The two traces the verdict compared: adds the culprit's element-wise error.",
)
@location_options
def report(verdict: Path, output: Path, traces: tuple[str, str] | None) -> None:
    """Write the HTML report of VERDICT (what `tracespec diff --json` wrote).

    \b
    The page shows the module tree with each node's status, the first divergence and its
    evidence, the error along the network layer by layer (forward and backward) and, when the
    traces are given, a histogram and heatmap of the culprit's element-wise error.

    \b
    Examples:
      tracespec diff runs/torch runs/paddle --json verdict.json
      tracespec report verdict.json -o report.html --traces runs/torch runs/paddle
    """
    with report_errors():
        doc = load_verdict(verdict)
        trace_a, trace_b = (load_trace(traces[0]), load_trace(traces[1])) if traces else (None, None)
        write_html(output, doc, trace_a, trace_b)
    click.echo(f"wrote {output}", err=True)
