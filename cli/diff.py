"""``tracespec diff A B``: where do two runs diverge? A thin layer over :func:`tracespec.compare`.

Exit codes: 0 the runs agree within tolerance, 1 they diverge, 2 usage error, 3 unreadable or
invalid input, 4 they agree where compared but A or B is incomplete. ``--json -`` prints the verdict alone on stdout; the report and the progress bar go
to the terminal (stdout for the report, stderr for progress).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from tracespec.cli.convert import checkpoint_options, diff_checkpoint_files, reject_checkpoint_options
from tracespec.cli.errors import EXIT_DIVERGED, EXIT_INCOMPLETE, report_errors
from tracespec.compare import MODES, Verdict, compare_traces
from tracespec.compare.verdict import culprit_units, describe_metrics, describe_side, format_number, source_line
from tracespec.compare.calls import LOW_COVERAGE
from tracespec.compare.engine import StepRange
from tracespec.errors import UsageError
from tracespec.format.tables import STAGES

__all__ = ["diff", "render_report"]

_MARK = {"pass": "✓", "pass_within_tolerance": "≈", "diverged": "✗", "skipped": "·"}
_GROWTH_ROWS = 24
_SPARK = "▁▂▃▄▅▆▇█"
_SPARK_WIDTH = 60
_SPARK_FLOOR = -3.0
"""log10 of the smallest ratio to tolerance drawn above the lowest bar (1e-3: agreement well within
tolerance); a ratio of 1 or more (beyond tolerance) is drawn in red."""


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


class StepParam(click.ParamType):
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
            return ends[0]  # type: ignore[return-value]
        if ends[0] is not None and ends[1] is not None and ends[0] > ends[1]:
            self.fail(f"{value!r}: the first step is after the last", param, ctx)
        return (ends[0], ends[1])


def _dtype_tolerance(dtype: str, tolerance: dict[str, Any], mode: str) -> str:
    """``float32 rel RMSE 7.6e-06, rtol 1.3e-06, atol 1e-05 × RMS`` (rel RMSE in mode norm only)."""
    norm = f" rel RMSE {tolerance['rel_rmse']:.2g}," if mode == "norm" else ""
    scaled = " × RMS" if tolerance["atol_scaled"] else ""
    return f"{dtype}{norm} rtol {tolerance['rtol']:.2g}, atol {tolerance['atol']:.2g}{scaled}"


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
@click.option("--html", "html_path", metavar="PATH",
              help="Also write the HTML report to PATH: one self-contained file that opens offline.")
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="norm (default): RMSE / RMS within the dtype's noise level, no element grossly off; strict "
                   "(default with --rtol/--atol): every element within tolerance; mean: mean error; stats: recorded statistics only (reads no "
                   "data); bitwise: identical bits.")
@click.option("--atol", type=float, default=None, help="Absolute tolerance for every tensor (default: per dtype, times the tensors' RMS).")
@click.option("--rtol", type=float, default=None, help="Relative tolerance for every tensor (default: per dtype).")
@click.option("--rel-rmse", type=float, default=None,
              help="Mode norm: the largest RMSE / RMS for every tensor (default: per dtype, docs/diff.md).")
@click.option("--tol", "overrides", multiple=True, metavar="GLOB=rtol:X,atol:Y,rel_rmse:Z,mode:M",
              help="Per-route tolerance or mode, on A's routes (repeatable; later wins).")
@click.option("--step", "steps", type=StepParam(), multiple=True, metavar="STEP|FIRST:LAST",
              help="Compare only this step, or the steps FIRST to LAST of both runs (both included; 200: or :300 "
                   "leave an end open). Repeatable.")
@click.option("--first-step-only", is_flag=True,
              help="Stop at the first step where the runs diverge: the quickest answer on a long run.")
@click.option("--rank", "ranks", type=int, multiple=True, help="Compare only this rank (repeatable).")
@click.option("--stage", "stages", type=click.Choice(STAGES), multiple=True, help="Compare only this stage (repeatable).")
@click.option("--route", "routes", multiple=True, metavar="GLOB", help="Compare only nodes whose A route matches (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip nodes whose A route matches (repeatable).")
@click.option("--layer-map", type=click.Path(dir_okay=False, path_type=str), help="YAML/JSON file mapping A's routes to B's (docs/diff.md).")
@click.option("--save-map", type=click.Path(dir_okay=False, path_type=str), metavar="PATH",
              help="Write the alignment found as a layer map (YAML) to PATH: correct it and pass it back with --layer-map.")
@click.option("--baseline", metavar="A2", type=click.Path(path_type=str),
              help="A second recording of A's run with a harmless change (other thread count, device or run): each "
                   "tensor may differ from A by up to 4x what A2 differs (its noise floor, measured).")
@click.option("--read-all", is_flag=True, help="Read and compare data even where content hashes agree.")
@click.option("--top", type=int, default=5, show_default=True, help="How many of the worst nodes to list.")
@click.option("--brief", is_flag=True, help="Only the coverage, the verdict, the culprit with its path, and what to do next.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="Compare on a local Dask cluster of N worker processes, one rank per task, into the same verdict "
                   "(needs tracespec[dask]; prints the dashboard's link).")
@click.option("--scheduler", metavar="ADDRESS",
              help="Compare on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786); its workers open A and B "
                   "themselves: give paths or URLs every worker can read (docs/diff.md, 'On a Dask cluster').")
@checkpoint_options  # --strip-prefix-a/-b, --threshold, --scale, --show-unchanged (cli/convert.py)
def diff(a: str, b: str, json_path: str | None, html_path: str | None, mode: str | None, atol: float | None, rtol: float | None,
         rel_rmse: float | None, overrides: tuple[str, ...], steps: tuple[int | StepRange, ...], ranks: tuple[int, ...], stages: tuple[str, ...],
         routes: tuple[str, ...], exclude: tuple[str, ...], layer_map: str | None, save_map: str | None, baseline: str | None,
         read_all: bool, top: int, brief: bool, progress: bool | None, first_step_only: bool, workers: int | None,
         scheduler: str | None, **checkpoint: Any) -> None:
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
                    a, b, mode=mode, rtol=rtol, atol=atol, rel_rmse=rel_rmse, tolerances=parsed,
                    steps=steps or None, ranks=ranks or None, stages=stages or None,
                    routes=routes, exclude=exclude, layer_map=layer_map, save_map=save_map, baseline=baseline,
                    trust_hashes=not read_all, progress=update, first_step_only=first_step_only, client=client,
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
            click.echo(render_report(verdict, top, brief))
        if html_path is not None:
            write_html_report(html_path, verdict, a, b)
    if not verdict.passed:
        sys.exit(EXIT_DIVERGED)
    if not (verdict.a["complete"] and verdict.b["complete"]):
        sys.exit(EXIT_INCOMPLETE)


def write_html_report(path: str, verdict: Verdict, a: str, b: str) -> None:
    """``--html``: the report of :mod:`tracespec.report`, with the culprit's element-wise error."""
    from tracespec.report import write_report
    from tracespec.storage import load_trace

    try:
        write_report(path, verdict.to_json(), load_trace(a), load_trace(b))
    except OSError as exc:
        raise click.BadParameter(f"cannot write {path}: {exc.strerror}", param_hint="--html") from None
    click.echo(f"HTML report: {path}", err=True)


# --------------------------------------------------------------------------- the report
def _unit_label(node: dict[str, Any]) -> str:
    mark = _MARK[node["status"]]
    label = node["divergence"] or ("pass" if node["status"] == "pass" else node["status"].replace("_", " "))
    if node["divergence"] == "introduced":
        label = click.style("INTRODUCED", fg="red", bold=True)
    return f"{mark} {label}"


def _path_tree(verdict: Verdict) -> list[str]:
    by_route, chain = culprit_units(verdict.to_json())
    lines = []
    for depth, route in enumerate(chain):
        unit = by_route[route]
        indent = "    " * (depth - 1) if depth else ""
        if depth:
            siblings = [r for r in by_route if _parent_of(r) == chain[depth - 1] and r != route]
            if siblings:
                failed = sum(1 for r in siblings if by_route[r]["status"] == "diverged")
                lines.append(f"{indent}├── … {len(siblings) - failed} sibling(s) agree, {failed} diverge")
        branch = "└── " if depth else ""
        name = click.style(route or "(root)", bold=True)
        lines.append(f"{indent}{branch}{name} {unit['a']['class_name']}  {_unit_label(unit)}")
    return lines


def _parent_of(route: str) -> str | None:
    if route == "":
        return None
    return route.rpartition(".")[0]


def _growth_lines(verdict: Verdict) -> list[str]:
    first = verdict.first_divergence
    if first is not None:
        step, rank = first["step"], first["rank"]
    else:
        step, rank = (verdict.selection["steps"] or [0])[0], (verdict.selection["ranks"] or [0])[0]
    curve = [p for p in verdict.error_growth if p["stage"] == "forward" and p["step"] == step and p["rank"] == rank]
    if not curve:
        return []
    depth = 1
    while depth < 8 and sum(1 for p in curve if 0 < p["depth"] <= depth + 1) <= _GROWTH_ROWS:
        depth += 1
    rows = [p for p in curve if 0 < p["depth"] <= depth] or curve
    seen = set()
    lines = []
    width = max(len(p["route"] or "(root)") for p in rows)
    floor = -8.0  # log10 of the error drawn as an empty bar
    top = max((math.log10(p["rel_rmse"]) for p in rows if p["rel_rmse"]), default=floor + 1)
    for point in rows:
        key = (point["route"], point["call"])
        if key in seen:
            continue
        seen.add(key)
        rel = point["rel_rmse"]
        bar = ""
        if rel:
            bar = "█" * max(1, round(30 * (math.log10(rel) - floor) / max(top - floor, 1e-9)))
        call = f"#{point['call']}" if point["call"] else ""
        lines.append(f"  {(point['route'] or '(root)') + call:<{width + 3}} {format_number(rel):>9}  {_MARK[point['status']]} {bar}")
    return lines


def _timeline_lines(verdict: Verdict) -> list[str]:
    """Divergence over time: a sparkline of the worst ratio to tolerance per step (steps grouped
    into at most 60 columns, each the worst of its steps), and the first divergent step."""
    series = verdict.steps
    if len(series) < 2:
        return []
    width = min(_SPARK_WIDTH, len(series))
    columns = [series[i * len(series) // width : (i + 1) * len(series) // width] for i in range(width)]
    levels = [max((math.inf if p["worst_ratio"] is None else p["worst_ratio"]) for p in column) for column in columns]
    top = max((math.log10(v) for v in levels if 0 < v < math.inf), default=0.0)
    top = max(top, _SPARK_FLOOR + 1)
    line = ""
    for level, column in zip(levels, columns):
        position = 0.0 if level <= 0 else 1.0 if level == math.inf else (math.log10(level) - _SPARK_FLOOR) / (top - _SPARK_FLOOR)
        bar = _SPARK[min(len(_SPARK) - 1, max(0, round(position * (len(_SPARK) - 1))))]
        line += click.style(bar, fg="red") if any(p["diverged"] for p in column) else bar
    per = "" if len(series) <= _SPARK_WIDTH else f", {len(series) / len(columns):.3g} steps per bar"
    title = (f"Over {len(series)} steps ({series[0]['step']} to {series[-1]['step']}; worst ratio to tolerance per "
             f"step, log scale{per}):")
    lines = [title, f"  {line}"]
    diverged = [p for p in series if p["diverged"]]
    if diverged:
        first = diverged[0]
        culprit = first["first"]
        where = f"; {culprit['route'] or '(root)'} ({culprit['class_name']}) {culprit['kind']} it in {culprit['stage']}" \
            if culprit else ""
        lines.append(f"  first divergent step {first['step']}: {first['diverged']} of {first['records']} record pairs "
                     f"diverged{where}; {len(diverged)} of {len(series)} steps diverge")
    else:
        lines.append(f"  no step diverges (worst ratio {format_number(max(levels))})")
    if verdict.selection.get("first_step_only") and diverged:
        lines.append("  (--first-step-only: stopped there)")
    return lines


def _benign_lines(verdict: Verdict) -> list[str]:
    """Kink flips and what inherited them: passed, but never silently."""
    if not verdict.benign:
        return []
    kinks = [b for b in verdict.benign if b["kind"] == "kinks"]
    inherited = [b for b in verdict.benign if b["kind"] == "inherited"]
    lines = ["Benign differences (passed; see 'benign' in --json):"]
    for item in kinks:
        lines.append(f"  {item['stage']} {item['route'] or '(root)'} ({item['class_name']}) {item['role']}[{item['slot']}]: "
                     f"{item['count']} kink flip(s) where {item['where']}")
    if inherited:
        worst = max(inherited, key=lambda b: b["rel_rmse"])
        lines.append(f"  {len(inherited)} tensor(s) inherited them (worst rel RMSE {format_number(worst['rel_rmse'])} at "
                     f"{worst['route'] or '(root)'} {worst['role']}[{worst['slot']}])")
    return lines


def render_report(verdict: Verdict, top: int = 5, brief: bool = False) -> str:
    """The terminal report of a verdict (what ``tracespec diff`` prints); ``brief``: without the
    worst nodes, the error growth, benign differences, tolerances and the unmatched list."""
    out: list[str] = []
    a, b = verdict.a, verdict.b
    out.append(f"A {a['path']} ({a['framework']} {a['framework_version'] or ''})".rstrip() +
               f"  vs  B {b['path']} ({b['framework']} {b['framework_version'] or ''})".rstrip())
    incomplete = [side for side, trace in (("A", a), ("B", b)) if not trace["complete"]]
    for side in incomplete:
        cut = [f"{what} {verdict.coverage.get(f'{what}_only_{other}')}" for what in ("steps", "ranks")
               for other in ("a", "b") if verdict.coverage.get(f"{what}_only_{other}") and other != side.lower()]
        out.append(click.style(
            f"warning: {side} is INCOMPLETE (a writer did not close); compared what both hold"
            + (f"; not compared: {', '.join(cut)} (only in {'B' if side == 'A' else 'A'})" if cut else ""),
            fg="yellow", bold=True))
    low = []
    for rank, cov in verdict.coverage["ranks"].items():
        calls = cov["calls"]
        methods = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in calls["by_method"].items() if v)
        out.append(f"rank {rank}: compared {calls['compared_a']} of {calls['leaf_a']} leaf calls of A ({calls['fraction_a']:.0%}) "
                   f"and {calls['compared_b']} of {calls['leaf_b']} of B ({calls['fraction_b']:.0%})"
                   + (f"; aligned by {methods}" if methods else ""))
        for side, other in (("A", "B"), ("B", "A")):
            if calls.get(f"boundary_{side.lower()}"):
                out.append(f"  {calls[f'boundary_{side.lower()}']} of {side}'s leaf calls compared only at the boundary of a call "
                           f"that holds several of them, where {other} records no call inside (a region compiled as one graph, "
                           "a module recorded without its children)")
        if calls["fraction_a"] < LOW_COVERAGE:
            low.append(f"rank {rank}: {calls['fraction_a']:.0%}")
    if low:
        out.append(click.style(
            f"warning: LOW COVERAGE ({', '.join(low)} of A's leaf calls compared): the verdict says nothing about the rest. "
            "Read 'Unmatched' below; write the alignment found with --save-map map.yaml, correct it, and pass it back "
            "with --layer-map map.yaml.", fg="yellow", bold=True))
    s = verdict.summary
    out.append(
        f"compared {verdict.coverage['records_compared']} tensor pairs in {s['units']} calls: "
        f"{s['pass']} identical, {s['pass_within_tolerance']} within tolerance, {s['diverged']} diverged"
        + (f", {s['skipped']} skipped" if s["skipped"] else "")
    )
    out.extend(_timeline_lines(verdict))
    first = verdict.first_divergence
    out.append("")
    if first is None:
        shares = [cov["calls"]["fraction_a"] for cov in verdict.coverage["ranks"].values()]
        share = f" in the {min(shares):.0%} of A's leaf calls compared" if shares and min(shares) < 1 else ""
        caveats = (["LOW COVERAGE"] if low else []) + [f"{side} INCOMPLETE" for side in incomplete]
        out.append(click.style("PASS", fg="green", bold=True) + f": no divergence{share}"
                   + (click.style(f" ({', '.join(caveats)}, see above)", fg="yellow", bold=True) if caveats else ""))
    else:
        kind = "INTRODUCED it" if first["kind"] == "introduced" else "inherited it (see below)"
        out.append(
            click.style("FAIL", fg="red", bold=True)
            + f": first divergence in {first['stage']}, step {first['step']}, rank {first['rank']}: "
            + f"{describe_side(first['a'])} {kind}"
        )
        if first["b"]["route"] != first["a"]["route"] or "routes" in first["b"]:
            out.append(f"  in B: {describe_side(first['b'])}")
        if "routes" in first["a"]:
            out.append(f"  ({first['alignment']}: compared at the group's boundary, the first member's inputs and the last one's outputs)")
        if first["record"]:
            mismatch = first.get("mismatch")
            measured = (f"shape {mismatch['shape']['a']} {mismatch['dtype']['a']} in A, "
                        f"{mismatch['shape']['b']} {mismatch['dtype']['b']} in B") if mismatch else \
                describe_metrics(first["metrics"], verdict.tolerances)
            out.append(f"  {first['record']['role']}[{first['record']['slot']}]: {measured}")
        if first["evidence"]:
            out.append(f"  evidence: {first['evidence']}")
        for side, label in (("a", "code"), ("b", "code in B")):
            where = source_line(first[side])
            if where and (side == "a" or where != source_line(first["a"])):
                out.append(f"  {label}: {where}")
        out.append("")
        out.append(f"Path to the first divergence ({first['stage']}):")
        out.extend(_path_tree(verdict))
        worst = [w for w in verdict.worst if w["stage"] == first["stage"]] or verdict.worst
        if worst and not brief:
            out.append("")
            out.append(f"Worst nodes ({worst[0]['stage']}; worst element × elementwise tolerance):")
            for item in worst[:top]:
                ratio = item["metrics"].get("tolerance_ratio") if item["metrics"] else None
                out.append(f"  {item['stage']:<8} {item['route'] or '(root)'}  ×{format_number(ratio)}  {item['divergence'] or ''}")
    if brief:
        unmatched = f"{len(verdict.unmatched)} unmatched node(s) or call(s) (--json has them); " if verdict.unmatched else ""
        out.append("")
        out.append(f"{unmatched}Next: {verdict.hint}")
        return "\n".join(out)
    growth = _growth_lines(verdict)
    if growth:
        out.append("")
        out.append("Error growth (forward; RMSE / RMS of each layer's output, log scale):")
        out.extend(growth)
    benign = _benign_lines(verdict)
    if benign:
        out.append("")
        out.extend(benign)
    tol = verdict.tolerances
    by_dtype = "; ".join(_dtype_tolerance(d, t, tol["mode"]) for d, t in tol["by_dtype"].items())
    out.append("")
    slack = f" (each element within ×{tol['element_slack']:g} rtol/atol)" if tol["mode"] == "norm" else ""
    out.append(f"Tolerances: mode {tol['mode']}{slack}" + (f"; {by_dtype}" if by_dtype else "") +
               (f"; {len(tol['overrides'])} route override(s)" if tol["overrides"] else ""))
    if tol.get("baseline"):
        base = tol["baseline"]
        out.append(f"Baseline {base['path']}: {base['records']} tensor(s) allowed up to ×{base['factor']:g} "
                   "their measured noise |A - A2| (the 'baseline' of each record in --json)")
    if verdict.unmatched:
        out.append(f"Unmatched nodes: {len(verdict.unmatched)}")
        for item in verdict.unmatched[:5]:
            call = f" call {item['call']}" if item.get("call") else ""
            out.append(f"  {item['side'].upper()} {item['route'] or '(root)'}{call} ({item['class_name']}): {item['reason']}")
        if len(verdict.unmatched) > 5:
            out.append(f"  … {len(verdict.unmatched) - 5} more in --json")
    out.append("Next: " + verdict.hint)
    return "\n".join(out)
