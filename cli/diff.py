"""``tracespec diff A B``: where do two runs diverge? A thin layer over :func:`tracespec.compare`.

Exit codes: 0 the runs agree within tolerance, 1 they diverge, 2 usage error, 3 unreadable or
invalid input, 4 they agree where compared but A or B is incomplete. ``--json -`` prints the verdict alone on stdout; the report and the progress bar go
to the terminal (stdout for the report, stderr for progress).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from tracespec.cli.convert import checkpoint_options, diff_checkpoint_files, reject_checkpoint_options
from tracespec.cli.errors import EXIT_DIVERGED, EXIT_INCOMPLETE, report_errors
from tracespec.cli.locations import location_options
from tracespec.compare import MODES, Verdict, compare_traces
from tracespec.compare.engine import SPLIT_BYTES, StepRange
from tracespec.errors import UsageError
from tracespec.format.tables import STAGES
from tracespec.report.text import render_text

__all__ = ["diff"]


def _parse_override(text: str) -> tuple[str, dict[str, Any]]:
    """``ROUTE_GLOB=rtol:1e-3,atol:1e-5,rel_rmse:1e-4,mode:mean`` -> (glob, {...})."""
    route, sep, spec = text.partition("=")
    if not sep or not route:
        raise click.BadParameter(f"{text!r}: expected ROUTE_GLOB=rtol:X,atol:Y,rel_rmse:Z[,mode:M]", param_hint="--tol")
    values: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, colon, value = item.partition(":")
        if not colon or key not in ("rtol", "atol", "rel_rmse", "mode"):
            raise click.BadParameter(f"{item!r} in {text!r}: use rtol:X, atol:Y, rel_rmse:Z or mode:M", param_hint="--tol")
        if key == "mode":
            values[key] = value
        else:
            try:
                values[key] = float(value)
            except ValueError:
                raise click.BadParameter(f"{key} {value!r} in {text!r} is not a number", param_hint="--tol") from None
    return route, values


class StepParam(click.ParamType[int | StepRange]):
    """``250`` -> 250; ``200:300`` -> (200, 300); ``200:`` -> (200, None); ``:300`` -> (None, 300)."""

    name = "step"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | StepRange:
        if isinstance(value, (int, tuple)):
            return value
        first, colon, last = str(value).partition(":")
        try:
            ends = [int(text) if text else None for text in ((first, last) if colon else (first,))]
        except ValueError:
            self.fail(f"{value!r} is not a step (250) or a range of steps (200:300, 200:, :300)", param, ctx)
        if not colon:
            if ends[0] is None:
                self.fail("a step is a number (250) or a range (200:300)", param, ctx)
            return ends[0]
        if ends[0] is not None and ends[1] is not None and ends[0] > ends[1]:
            self.fail(f"{value!r}: the first step is after the last", param, ctx)
        return (ends[0], ends[1])


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("comparing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("diff", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextmanager
def _dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """``--workers``/``--scheduler``: a Dask client, its dashboard's link on stderr; else None
    (and dask is not imported)."""
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise UsageError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    from tracespec.compare.distributed import cluster_client

    with cluster_client(workers, scheduler) as client:
        size = len(client.scheduler_info().get("workers", {}))
        click.echo(f"Dask: {size} worker(s); dashboard {client.dashboard_link}", err=True)
        yield client


@click.command(context_settings={"max_content_width": 100})
@click.argument("a", metavar="A", type=click.Path(path_type=str))
@click.argument("b", metavar="B", type=click.Path(path_type=str))
@click.option("--json", "json_path", metavar="PATH", help="Write the verdict as JSON to PATH ('-' for stdout, alone).")
@click.option(
    "--html", "html_path", metavar="PATH", help="Also write the HTML report to PATH: one self-contained file that opens offline."
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default=None,
    help="norm (default): RMSE / RMS within the dtype's noise level, no element grossly off; strict "
    "(default with --rtol/--atol): every element within tolerance; mean: mean error; stats: recorded statistics only (reads no "
    "data); bitwise: identical bits.",
)
@click.option(
    "--atol", type=float, default=None, help="Absolute tolerance for every tensor (default: per dtype, times the tensors' RMS)."
)
@click.option("--rtol", type=float, default=None, help="Relative tolerance for every tensor (default: per dtype).")
@click.option(
    "--rel-rmse",
    type=float,
    default=None,
    help="Mode norm: the largest RMSE / RMS for every tensor (default: per dtype, docs/diff.md).",
)
@click.option(
    "--tol",
    "overrides",
    multiple=True,
    metavar="GLOB=rtol:X,atol:Y,rel_rmse:Z,mode:M",
    help="Per-route tolerance or mode, on A's routes (repeatable; later wins).",
)
@click.option(
    "--step",
    "steps",
    type=StepParam(),
    multiple=True,
    metavar="STEP|FIRST:LAST",
    help="Compare only this step, or the steps FIRST to LAST of both runs (both included; 200: or :300 "
    "leave an end open). Repeatable.",
)
@click.option(
    "--first-step-only", is_flag=True, help="Stop at the first step where the runs diverge: the quickest answer on a long run."
)
@click.option("--rank", "ranks", type=int, multiple=True, help="Compare only this rank (repeatable).")
@click.option("--stage", "stages", type=click.Choice(STAGES), multiple=True, help="Compare only this stage (repeatable).")
@click.option("--route", "routes", multiple=True, metavar="GLOB", help="Compare only nodes whose A route matches (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip nodes whose A route matches (repeatable).")
@click.option(
    "--layer-map", type=click.Path(dir_okay=False, path_type=str), help="YAML/JSON file mapping A's routes to B's (docs/diff.md)."
)
@click.option(
    "--save-map",
    type=click.Path(dir_okay=False, path_type=str),
    metavar="PATH",
    help="Write the alignment found as a layer map (YAML) to PATH: correct it and pass it back with --layer-map.",
)
@click.option(
    "--baseline",
    metavar="A2",
    type=click.Path(path_type=str),
    help="A second recording of A's run with a harmless change (other thread count, device or run): each "
    "tensor may differ from A by up to 4x what A2 differs (its noise floor, measured).",
)
@click.option("--read-all", is_flag=True, help="Read and compare data even where content hashes agree.")
@click.option("--top", type=int, default=5, show_default=True, help="How many of the worst nodes to list.")
@click.option("--brief", is_flag=True, help="Only the coverage, the verdict, the culprit with its path, and what to do next.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    metavar="N",
    help="Compare on a local Dask cluster of N worker processes, a rank (or, with fewer ranks than 2N, a run of "
    "its steps) per task, into the same verdict (needs tracespec[dask]; prints the dashboard's link; "
    "--storage-option and --cache reach the workers).",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Compare on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786); its workers open A and B "
    "themselves: give paths or URLs every worker can read (docs/diff.md, 'Many ranks, and a diff on a Dask cluster').",
)
@click.option(
    "--split-mb",
    type=click.IntRange(min=1),
    default=SPLIT_BYTES >> 20,
    show_default=True,
    metavar="MB",
    help="With --workers or --scheduler: a tensor pair of at least MB MiB (A and B together) is measured in pieces "
    "of a quarter of that by several workers at once.",
)
@checkpoint_options  # --strip-prefix-a/-b, --threshold, --scale, --show-unchanged (cli/convert.py)
@location_options
def diff(
    a: str,
    b: str,
    json_path: str | None,
    html_path: str | None,
    mode: str | None,
    atol: float | None,
    rtol: float | None,
    rel_rmse: float | None,
    overrides: tuple[str, ...],
    steps: tuple[int | StepRange, ...],
    ranks: tuple[int, ...],
    stages: tuple[str, ...],
    routes: tuple[str, ...],
    exclude: tuple[str, ...],
    layer_map: str | None,
    save_map: str | None,
    baseline: str | None,
    read_all: bool,
    top: int,
    brief: bool,
    progress: bool | None,
    first_step_only: bool,
    workers: int | None,
    scheduler: str | None,
    split_mb: int,
    **checkpoint: Any,
) -> None:
    """Find where run B diverges from run A (the reference), and which module introduced it.

    A and B are trace folders recorded with tracespec.record (any framework). Their calls are
    aligned (layer map, then equal routes, then structure, then dataflow: op family, shapes and the
    recorded values, so flat converted code, renamed model zoos and exports whose batch norms were
    folded into convolutions still align), every aligned tensor is compared in float64 with
    dtype-aware tolerances, and the walk in execution order names the first module whose inputs
    agree but whose outputs do not. The header says how much of each model was compared; check it
    before trusting a PASS.

    \b
    Examples:
      tracespec diff runs/torch runs/paddle
      tracespec diff runs/ref runs/new --mode strict
      tracespec diff runs/ref runs/new --stage forward --route 'blocks.*' --json verdict.json
      tracespec diff runs/torch runs/paddle --html report.html
      tracespec diff runs/torch runs/port --layer-map map.yaml --tol 'head=rtol:1e-4'
      tracespec diff runs/torch runs/x2paddle --save-map map.yaml   # edit map.yaml, pass it back
      tracespec diff runs/gpu runs/port --baseline runs/gpu_again    # GPU non-determinism as the noise floor
      tracespec diff runs/ref runs/new --json - | jq .first_divergence
      tracespec diff runs/long_a runs/long_b --step 200:300 --first-step-only   # a long training run
      tracespec diff runs/ddp_a runs/ddp_b --workers 4                  # ranks in parallel, on local Dask workers
      tracespec diff s3://runs/a s3://runs/b --scheduler tcp://head:8786   # on a multi-node Dask cluster

    A and B may instead be two checkpoint files (safetensors, PyTorch .pt/.bin, Paddle .pdparams,
    mixed): the allennlp-style edit script, streamed tensor by tensor: -key only in A, +key only
    in B, !key changed, with shapes and the distance ||a - b|| / sqrt(n) (docs/convert.md).
      tracespec diff base.bin tuned.safetensors --strip-prefix-b 'model.' --threshold 1e-4

    \b
    A layer map, for renames that structure cannot guess (docs/diff.md):
      map:
        - {a: "blocks.*.ln_1", b: "layers.*.norm1"}
        - {a: "head", b: "lm_head", transforms: {weight: transpose}}

    \b
    Reading the report: the tree is collapsed to the path to the first divergence;
    ✓ identical, ≈ within tolerance, ✗ diverged; INTRODUCED marks the culprit,
    "inherited" a node whose inputs already differed, "contains" a parent of the culprit.

    Exit codes: 0 agree, 1 diverged, 2 usage error, 3 unreadable or invalid input, 4 agree where
    compared but A or B is incomplete (a recording cut short; the report says what was not compared).
    """
    with report_errors():
        # Checkpoint files (safetensors, .pt/.bin, .pdparams): the allennlp-style edit script.
        if Path(a).is_file() or Path(b).is_file():
            sys.exit(diff_checkpoint_files(a, b, checkpoint, json_path, progress))
        reject_checkpoint_options(checkpoint)
        parsed = dict(_parse_override(text) for text in overrides)
        show_progress = progress if progress is not None else (sys.stderr.isatty() and json_path != "-")
        with _dask_client(workers, scheduler) as client, _progress_bar(show_progress) as update:
            try:
                verdict = compare_traces(
                    a,
                    b,
                    mode=mode,
                    rtol=rtol,
                    atol=atol,
                    rel_rmse=rel_rmse,
                    tolerances=parsed,
                    steps=steps or None,
                    ranks=ranks or None,
                    stages=stages or None,
                    routes=routes,
                    exclude=exclude,
                    layer_map=layer_map,
                    save_map=save_map,
                    baseline=baseline,
                    trust_hashes=not read_all,
                    progress=update,
                    first_step_only=first_step_only,
                    client=client,
                    split_bytes=split_mb << 20,
                )
            except UsageError as exc:
                raise click.UsageError(str(exc)) from None
        if json_path == "-":
            click.echo(verdict.dumps(), nl=False)
        else:
            if json_path is not None:
                try:
                    Path(json_path).write_text(verdict.dumps(), encoding="utf-8")
                except OSError as exc:
                    raise click.BadParameter(f"cannot write {json_path}: {exc.strerror}", param_hint="--json") from None
            click.echo(render_text(verdict, top, brief))
        if html_path is not None:
            write_html_report(html_path, verdict, a, b)
    if not verdict.passed:
        sys.exit(EXIT_DIVERGED)
    if not (verdict.a["complete"] and verdict.b["complete"]):
        sys.exit(EXIT_INCOMPLETE)


def write_html_report(path: str, verdict: Verdict, a: str, b: str) -> None:
    """``--html``: the report of :mod:`tracespec.report`, with the culprit's element-wise error."""
    from tracespec.report import write_html
    from tracespec.storage import load_trace

    try:
        write_html(path, verdict.to_json(), load_trace(a), load_trace(b))
    except OSError as exc:
        raise click.BadParameter(f"cannot write {path}: {exc.strerror}", param_hint="--html") from None
    click.echo(f"HTML report: {path}", err=True)
