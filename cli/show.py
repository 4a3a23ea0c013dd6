"""``tracespec show TRACE``: the module tree with shapes, dtypes and statistics."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import PurePath
from typing import Any

import click

from tracespec.cli.errors import report_errors
from tracespec.cli.locations import location_options
from tracespec.compare.view import read_node
from tracespec.format.tables import ROLES, STAGES
from tracespec.nonfinite import first_nonfinite
from tracespec.storage import Trace, load_trace

_ROLE_TAGS = {
    "input": "in",
    "output": "out",
    "grad_output": "grad_out",
    "grad_input": "grad_in",
    "parameter": "param",
    "buffer": "buffer",
    "parameter_grad": "param_grad",
    "optimizer_state": "optim",
}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def describe_record(record: dict[str, Any]) -> str:
    """One line for one tensor record: role, slot, dtype, shape and what was kept."""
    tag = f"{_ROLE_TAGS[record['role']]}[{record['slot']}]"
    if record.get("call"):
        tag += f"#{record['call']}"  # the second (third...) call of a module called more than once
    if record.get("stage") == "update":
        tag += "@update"  # weights and optimizer state after the optimizer step
    if record["dtype"] is None:
        return f"{tag} {record['value_type']} {record['value']}"
    shape = "x".join(map(str, record["shape"])) or "scalar"
    text = f"{tag} {record['dtype']}[{shape}]"
    if record["mean"] is not None or record["nan_count"]:
        text += f" mean={_fmt(record['mean'])} std={_fmt(record['std'])} min={_fmt(record['min'])} max={_fmt(record['max'])}"
        if record["nan_count"] or record["inf_count"]:
            text += f" nan={record['nan_count']} inf={record['inf_count']}"
    elif record["hash"] is not None:
        text += f" {record['hash'][:21]}"
    return text


def tree_view(trace: Trace, rank: int, step: int, roles: set[str], stages: set[str]) -> dict[str, Any]:
    """The tree of ``rank`` at ``step`` as nested dicts: node, records and children."""
    part = trace.parts[rank]
    nodes = part.nodes.to_pylist()
    calls = [c for c in part.calls.to_pylist() if c["step"] == step and c["stage"] == "forward"]
    call_count: dict[int, int] = defaultdict(int)
    for c in calls:
        call_count[c["node"]] += 1
    records: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in part.tensors.to_pylist():
        if r["step"] == step and r["role"] in roles and r["stage"] in stages:
            records[r["node"]].append(r)
    children: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for n in nodes:
        children[n["parent"]].append(n)

    def build(node: dict[str, Any]) -> dict[str, Any]:
        kids = sorted(children[node["node"]], key=lambda n: n["position"])
        source = read_node(trace, rank, node).source
        return {
            "route": node["route"],
            "class_name": node["class_name"],
            "kind": node["kind"],
            "source": None if source is None else source.to_json(),
            "calls": call_count[node["node"]],
            "records": [
                {k: v for k, v in r.items() if k not in ("node",)} for r in sorted(records[node["node"]], key=lambda r: r["id"])
            ],
            "children": [build(k) for k in kids],
        }

    return {"roots": [build(n) for n in sorted(children[None], key=lambda n: n["position"])]}


def rank_summaries(trace: Trace) -> list[dict[str, Any]]:
    """One line of facts per rank's part: device, steps, records, data bytes, whether it closed."""
    return [
        {
            "rank": r,
            "device": part.manifest.device,
            "steps": list(part.manifest.steps),
            "records": part.tensors.num_rows,
            "store_bytes": part.manifest.store_bytes,
            "complete": part.manifest.complete,
        }
        for r, part in sorted(trace.parts.items())
    ]


def _span(steps: list[int]) -> str:
    """``0-299`` for consecutive steps, else the list (shortened)."""
    if not steps:
        return "none"
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else str(steps[0])
    return ", ".join(map(str, steps[:6])) + (f", … ({len(steps)} steps)" if len(steps) > 6 else "")


def _echo_tree(node: dict[str, Any], prefix: str, last: bool, top: bool, max_depth: int | None, depth: int) -> None:
    branch = "" if top else ("└── " if last else "├── ")
    name = node["route"] or "(root)"
    calls = f" ×{node['calls']}" if node["calls"] > 1 else ""
    unused = " (not called)" if node["calls"] == 0 and node["kind"] == "module" else ""
    source = node["source"]
    at = f"  at {PurePath(source['file']).name}:{source['line']}" if source else ""
    click.echo(f"{prefix}{branch}{click.style(name, bold=True)} {node['class_name']}{calls}{unused}{at}")
    inner = prefix + ("" if top else ("    " if last else "│   "))
    for record in node["records"]:
        click.echo(f"{inner}{'│ ' if node['children'] else '  '} {describe_record(record)}")
    if max_depth is not None and depth >= max_depth:
        if node["children"]:
            click.echo(f"{inner}└── … {len(node['children'])} children (raise --depth)")
        return
    for i, child in enumerate(node["children"]):
        _echo_tree(child, inner, i == len(node["children"]) - 1, False, max_depth, depth + 1)


@click.command()
@click.argument("trace", type=click.Path(file_okay=False, path_type=str))
@click.option("--step", type=int, default=None, help="Step to show (default: the first recorded).")
@click.option("--rank", type=int, default=0, show_default=True, help="Rank to show.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLES),
    help="Roles of tensors to list (repeatable; default: output, parameter).",
)
@click.option("--stage", "stages", multiple=True, type=click.Choice(STAGES), help="Stages to list (default: all).")
@click.option("--depth", type=int, default=None, help="Collapse the tree below this depth.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and the tree as JSON on stdout.")
@click.option(
    "--first-nonfinite",
    is_flag=True,
    help="Name the first call (over steps, forward then backward) whose output or input gradient holds "
    "NaN or Inf while what it received did not, instead of the tree. Needs statistics (capture 'stats' or 'full').",
)
@location_options
def show(
    trace: str,
    step: int | None,
    rank: int,
    roles: tuple[str, ...],
    stages: tuple[str, ...],
    depth: int | None,
    as_json: bool,
    first_nonfinite: bool,
) -> None:
    """Show the module tree of TRACE with shapes, dtypes and statistics.

    \b
    Examples:
      tracespec show runs/ref
      tracespec show runs/ref --step 1 --role output --role grad_output --depth 3
      tracespec show runs/ref --json > tree.json
      tracespec show runs/crashed --first-nonfinite
    """
    with report_errors():
        t = load_trace(trace)
        if rank not in t.parts:
            raise click.BadParameter(f"rank {rank} is not in this trace (ranks: {t.ranks})", param_hint="--rank")
        if first_nonfinite:
            _show_first_nonfinite(t, rank, as_json)
            return
        steps = t.steps
        if step is None:
            step = steps[0] if steps else 0
        elif step not in steps:
            raise click.BadParameter(f"step {step} is not in this trace (steps: {steps})", param_hint="--step")
        view = tree_view(t, rank, step, set(roles or ("output", "parameter")), set(stages or STAGES))
    parts = rank_summaries(t)
    if as_json:
        doc = {
            "manifest": t.manifest.to_json(),
            "complete": t.complete,
            "ranks": t.ranks,
            "steps": steps,
            "partial_steps": t.partial_steps,
            "parts": parts,
            "rank": rank,
            "step": step,
            **view,
        }
        click.echo(json.dumps(doc, indent=1, default=str))
        return
    m = t.manifest
    state = "complete" if t.complete else click.style(f"INCOMPLETE ({t.how_ended()})", fg="yellow")
    click.echo(f"{t.path}  {m.framework} {m.framework_version or ''}  ranks {t.ranks}  steps {steps}  {state}")
    if m.world_size > 1:
        for part in parts:
            state = "complete" if part["complete"] else click.style("INCOMPLETE", fg="yellow")
            click.echo(
                f"  rank {part['rank']}: {part['device']}, steps {_span(part['steps'])}, "
                f"{part['records']} records, {part['store_bytes'] / 1e6:.1f} MB of data, {state}"
            )
        for missing in t.missing_ranks():
            click.echo(
                click.style(f"  rank {missing}: no part (the process never started recording, or died before)", fg="yellow")
            )
    click.echo(f"rank {rank}, step {step}")
    for root in view["roots"]:
        _echo_tree(root, "", True, True, depth, 0)


def _show_first_nonfinite(t: Trace, rank: int, as_json: bool) -> None:
    origin = first_nonfinite(t, rank)
    if as_json:
        click.echo(json.dumps({"first_nonfinite": None if origin is None else origin.to_json()}, indent=1))
    elif origin is not None:
        click.echo(f"first non-finite value: {origin.describe()}")
    else:
        click.echo(
            f"no recorded call of rank {rank} produced NaN or Inf from finite values"
            + ("" if t.complete else f" (the trace is incomplete: {t.how_ended()})")
        )
