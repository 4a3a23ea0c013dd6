"""``tracespec cp SRC DST``: copy a trace between folders and object stores, checking it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from tracespec.cli.errors import report_errors
from tracespec.cli.locations import parse_storage_options
from tracespec.storage import copy_trace, location_defaults


@click.command()
@click.argument("source", metavar="SRC", type=click.Path(path_type=str))
@click.argument("destination", metavar="DST", type=click.Path(path_type=str))
@click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An fsspec option of SRC's and DST's stores, repeatable (endpoint_url=http://localhost:9000).",
)
@click.option(
    "--src-option",
    "source_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option of SRC's store only (when SRC and DST are on different stores).",
)
@click.option("--dst-option", "destination_options", multiple=True, metavar="KEY=VALUE", help="An option of DST's store only.")
@click.option(
    "--cache",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="A remote SRC: keep what was fetched in DIR (default: a temporary folder).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
def cp(
    source: str,
    destination: str,
    storage_options: tuple[str, ...],
    source_options: tuple[str, ...],
    destination_options: tuple[str, ...],
    cache: str | None,
    progress: bool | None,
) -> None:
    """Copy the trace SRC to DST; each is a folder or a URL (s3://, gs://, az://, memory://, file://).

    Every array is checked as `validate --deep` checks it (its chunks, its content hash) before
    it is written; `part.json` is written last, so an interrupted copy leaves DST as it was, plus
    objects nothing names. Run the same command again to resume: what is already at DST with
    the right size is not copied again. DST holding another trace is refused.

    \b
    Examples:
      tracespec cp runs/ref s3://team-traces/ref
      tracespec cp s3://team-traces/ref runs/ref-copy
      tracespec cp runs/ref s3://bucket/ref --storage-option endpoint_url=http://localhost:9000

    Exit codes: 0 copied, 2 usage error, 3 SRC is not a valid trace or a store failed.
    """
    show = progress if progress is not None else sys.stderr.isatty()
    with report_errors(), location_defaults(parse_storage_options(storage_options)), _progress_bar(show) as update:
        report = copy_trace(
            source,
            destination,
            storage_options=parse_storage_options(source_options) or None,
            destination_options=parse_storage_options(destination_options) or None,
            cache=cache,
            progress=update,
        )
    click.echo(report.summary())


@contextmanager
def _progress_bar(show: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not show:
        yield None
        return
    with click.progressbar(length=1, label="copying arrays", file=sys.stderr) as bar:

        def update(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        yield update
