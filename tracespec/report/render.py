"""Turn a verdict (and, optionally, the two traces it compared) into the HTML report.

Constraints:
- Reads the verdict document (spec/v1 verdict schema), never the comparison engine's objects, so
  a verdict written on another machine renders the same.
- Traces are optional: with them the culprit gets an element-wise error histogram and heatmap
  (streamed, :mod:`tracespec.report.elementwise`) and the tree shows every node of A; without
  them the tree is built from the routes in the verdict.
- No framework import, no network; the output is one self-contained HTML file.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Final

import pyarrow.compute as pc

from tracespec.compare.calls import LOW_COVERAGE
from tracespec.report.elementwise import ElementwiseError, elementwise_error
from tracespec.report.page import render_page
from tracespec.report.svg import PALETTE, Series, heatmap, histogram, line_plot
from tracespec.storage import Trace

__all__ = ["render_html", "write_html"]

_STATUS_RANK: Final = {"diverged": 4, "unmatched": 3, "pass_within_tolerance": 2, "pass": 1, "skipped": 0}
_GROWTH_METRIC: Final = "rel_rmse"
_MAX_PLOTTED_MODULES: Final = 2000
_SHOWN_METRICS: Final = (
    "max_abs",
    "max_rel",
    "mean_abs",
    "rmse",
    "rel_rmse",
    "cosine",
    "sqnr_db",
    "max_ulp",
    "mismatched",
    "count",
    "tolerance_ratio",
    "worst_index",
    "worst_a",
    "worst_b",
)


@dataclass
class _StageResult:
    status: str
    divergence: str | None = None
    metric: str = ""


@dataclass
class _TreeNode:
    route: str
    route_b: str | None = None
    class_name: str = ""
    stages: dict[str, _StageResult] = field(default_factory=dict)
    order: float = math.inf
    children: list[str] = field(default_factory=list)

    def worst(self) -> _StageResult | None:
        """The stage result to summarise the node with: the worst status, an introduction first."""
        if not self.stages:
            return None
        return max(self.stages.values(), key=lambda r: (_STATUS_RANK.get(r.status, -1), r.divergence == "introduced"))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _units(verdict: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    units = verdict.get("nodes", [])
    return units if isinstance(units, list) else []


def _route_of(side: Any) -> str | None:
    return side.get("route") if isinstance(side, Mapping) else None


def _parent_route(route: str, known: Mapping[str, Any]) -> str | None:
    """The longest proper dotted prefix of ``route`` that is a known route (the root is ``""``)."""
    if route == "":
        return None
    parts = route.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:cut])
        if candidate in known:
            return candidate
    return ""


def _node_label(status: str | None, divergence: str | None) -> str | None:
    if status == "diverged":
        return divergence if divergence in ("introduced", "inherited", "contains") else "fail"
    return {"pass_within_tolerance": "pass", "pass": "pass", "unmatched": "unmatched", "skipped": "skipped"}.get(status or "")


def _build_tree(verdict: Mapping[str, Any], trace_a: Trace | None, step: int | None = None) -> dict[str, _TreeNode]:
    """The module tree with each node's results (of ``step`` only, where given)."""
    tree: dict[str, _TreeNode] = {}
    if trace_a is not None:
        rank = trace_a.ranks[0]
        for order, row in enumerate(trace_a.parts[rank].nodes.to_pylist()):
            tree.setdefault(row["route"], _TreeNode(row["route"], class_name=row["class_name"], order=order))
    for index, unit in enumerate(_units(verdict)):
        route = _route_of(unit.get("a"))
        if route is None or (step is not None and unit.get("step") != step):
            continue
        node = tree.setdefault(route, _TreeNode(route, order=len(tree) + index))
        node.route_b = _route_of(unit.get("b"))
        node.class_name = node.class_name or str(unit.get("a", {}).get("class_name", ""))
        stage, status = str(unit.get("stage", "")), str(unit.get("status", ""))
        metrics = unit.get("metrics") or {}
        ratio = metrics.get("tolerance_ratio")
        result = _StageResult(
            status,
            unit.get("divergence"),
            f"{stage} {_GROWTH_METRIC}={_fmt(metrics.get(_GROWTH_METRIC))}"
            + (f" ×tol {_fmt(ratio)}" if ratio is not None else ""),
        )
        seen = node.stages.get(stage)
        if seen is None or (_STATUS_RANK.get(status, -1), result.divergence == "introduced") > (
            _STATUS_RANK.get(seen.status, -1),
            seen.divergence == "introduced",
        ):
            node.stages[stage] = result
    for item in verdict.get("unmatched", []) or []:
        if isinstance(item, Mapping) and item.get("side", "a") == "a" and isinstance(item.get("route"), str):
            node = tree.setdefault(item["route"], _TreeNode(item["route"], order=len(tree)))
            node.stages.setdefault("unmatched", _StageResult("unmatched", metric=str(item.get("reason", ""))))
    if "" not in tree:
        tree[""] = _TreeNode("", class_name="(root)", order=-1)
    for route in tree:
        parent = _parent_route(route, tree)
        if parent is not None:
            tree[parent].children.append(route)
    for node in tree.values():
        node.children.sort(key=lambda r: tree[r].order)
    return tree


_STAGE_TAGS: Final = {"forward": "fwd", "backward": "bwd", "update": "upd", "unmatched": ""}


def _flatten_tree(tree: dict[str, _TreeNode], culprit_route: str | None) -> tuple[list[list[Any]], int | None]:
    """Pre-order rows for the page: ``[route, route_b, class, label, parent index, metric, badges]``
    where ``label`` sums the node up and ``badges`` lists ``[stage tag, label]`` per stage."""
    rows: list[list[Any]] = []
    culprit = None
    stack: list[tuple[str, int | None]] = [("", None)]
    while stack:
        route, parent = stack.pop()
        node = tree[route]
        index = len(rows)
        if route == culprit_route:
            culprit = index
        worst = node.worst()
        badges = [
            [_STAGE_TAGS.get(stage, stage), _node_label(r.status, r.divergence)]
            for stage, r in sorted(
                node.stages.items(), key=lambda item: list(_STAGE_TAGS).index(item[0]) if item[0] in _STAGE_TAGS else 9
            )
        ]
        rows.append(
            [
                route,
                node.route_b,
                node.class_name,
                _node_label(worst.status, worst.divergence) if worst else None,
                parent,
                worst.metric if worst else "",
                badges,
            ]
        )
        stack.extend((child, index) for child in reversed(node.children))
    return rows, culprit


def _layer_routes(tree: dict[str, _TreeNode]) -> list[str]:
    """The routes to plot "layer by layer": the blocks of the longest run of same-class children
    (``encoder.layer.0`` ... ``encoder.layer.5``) and, around them, the siblings of the containers
    that hold them (embeddings before, pooler after). Falls back to the root's children."""
    best, best_count = None, 1
    for route, node in tree.items():
        classes = [tree[c].class_name for c in node.children]
        count = max(Counter(classes).values(), default=0)
        if count > best_count:
            best, best_count = route, count
    if best is None:
        return list(tree[""].children)
    chosen = list(tree[best].children)
    route = best
    while route:
        parent = _parent_route(route, tree)
        if parent is None:
            break
        chosen.extend(r for r in tree[parent].children if r != route)
        route = parent
    return sorted(chosen, key=lambda r: tree[r].order)


def _unit_error(unit: Mapping[str, Any]) -> float | None:
    """The unit's relative RMSE; 0 for a unit whose outputs are identical (compared by hash)."""
    metrics = unit.get("metrics")
    if not isinstance(metrics, Mapping):
        return None
    value = metrics.get(_GROWTH_METRIC)
    if value is None and metrics.get("identical"):
        return 0.0
    return value if isinstance(value, (int, float)) else None


def _growth_svg(verdict: Mapping[str, Any], tree: dict[str, _TreeNode], culprit: Mapping[str, Any] | None) -> str:
    units = _units(verdict)
    step = culprit.get("step") if culprit else None
    rank = culprit.get("rank") if culprit else None
    if step is None and units:
        step, rank = units[0].get("step"), units[0].get("rank")
    # units are listed in execution (completion) order within each stage
    selected = [u for u in units if u.get("step") == step and u.get("rank") == rank]
    by_stage: dict[str, dict[str, float | None]] = {}
    for u in selected:
        values = by_stage.setdefault(str(u.get("stage")), {})
        route = _route_of(u.get("a"))
        if isinstance(route, str) and route not in values:
            values[route] = _unit_error(u)
    culprit_route = _route_of(culprit.get("a")) if culprit else None
    layers = [r for r in _layer_routes(tree) if any(r in v for v in by_stage.values())]
    parts = []
    stages = [s for s in ("forward", "backward") if s in by_stage]
    labels = {"forward": "forward: output", "backward": "backward: input gradient"}
    if layers:
        series = [Series(labels[s], [by_stage[s].get(r) for r in layers], PALETTE[i]) for i, s in enumerate(stages)]
        highlight = next(
            (
                i
                for i, r in enumerate(layers)
                if culprit_route is not None and (culprit_route == r or culprit_route.startswith(r + "."))
            ),
            None,
        )
        parts.append(
            line_plot(
                [r or "(root)" for r in layers],
                series,
                highlight=highlight,
                title=f"Layer by layer: relative RMSE (step {step}, rank {rank})",
                y_label="RMSE / RMS of A",
            )
        )
    forward = by_stage.get("forward", {})
    if len(forward) > _MAX_PLOTTED_MODULES:
        parts.append(
            f'<p class="note">{len(forward)} modules ran forward; the every-module plot is drawn up to '
            f"{_MAX_PLOTTED_MODULES} (filter the tree to inspect them).</p>"
        )
    elif forward:
        routes = list(forward)
        highlight = routes.index(culprit_route) if culprit_route in routes else None
        parts.append(
            line_plot(
                [r or "(root)" for r in routes],
                [Series("forward: output", list(forward.values()))],
                highlight=highlight,
                title="Every module, in execution order (forward)",
                y_label="RMSE / RMS of A",
            )
        )
    if not parts:
        return '<p class="note">The verdict has no error-growth curve (no element-wise comparison).</p>'
    parts.append(
        '<p class="note">Relative RMSE of each module\'s output (forward) or input gradient '
        "(backward) against A; the culprit's layer is shaded. A line that climbs layer after "
        "layer is error compounding.</p>"
    )
    return "".join(parts)


_MAX_STEP_COLUMNS: Final = 400
"""The time plot draws at most this many x positions (each the worst of its steps)."""


def _timeline_svg(verdict: Mapping[str, Any]) -> str:
    """Divergence over time: the worst ratio to tolerance of each step (log scale), the steps
    that diverged in red, the first divergent step marked (a click shows its tree)."""
    series = [p for p in verdict.get("steps") or [] if isinstance(p, Mapping)]
    if len(series) < 2:
        return ""
    width = min(_MAX_STEP_COLUMNS, len(series))
    columns = [series[i * len(series) // width : (i + 1) * len(series) // width] for i in range(width)]
    finite = [p["worst_ratio"] for p in series if isinstance(p.get("worst_ratio"), (int, float))]
    infinite = 10 * max([1.0, *finite])  # a difference without a ratio (content hashes, shapes): drawn on top
    worst = [max(infinite if p.get("worst_ratio") is None else float(p["worst_ratio"]) for p in column) for column in columns]
    diverged = [w if any(p.get("diverged") for p in column) else None for w, column in zip(worst, columns)]
    first = next((p for p in series if p.get("diverged")), None)
    highlight = next((i for i, column in enumerate(columns) if first in column), None) if first else None
    labels = [str(column[0].get("step")) for column in columns]
    plot = line_plot(
        labels,
        [Series("worst ratio to tolerance", worst, PALETTE[0]), Series("steps that diverged", diverged, PALETTE[1])],
        title=f"Divergence over time: {len(series)} steps",
        y_label="worst |B - A| / tolerance",
        highlight=highlight,
        highlight_step=first.get("step") if first else None,
        threshold=1.0,
    )
    if first:
        culprit = first.get("first") or {}
        where = (
            (
                f"; {_fmt(culprit.get('route') or '(root)')} ({_fmt(culprit.get('class_name'))}) {_fmt(culprit.get('kind'))} "
                f"it in {_fmt(culprit.get('stage'))}"
            )
            if culprit
            else ""
        )
        text = (
            f"First divergent step {first.get('step')}: {first.get('diverged')} of {first.get('records')} record "
            f"pairs diverged{where}. Click the shaded band for that step's tree; "
            f"{sum(1 for p in series if p.get('diverged'))} of {len(series)} steps diverge."
        )
    else:
        text = f"No step diverges; the worst ratio to tolerance is {_fmt(max(finite, default=0.0))}."
    per = f" Each point is the worst of {len(series) / width:.3g} steps." if width < len(series) else ""
    return (
        f'<section id="timeline"><h2>Divergence over time</h2>{plot}'
        f'<p class="note">{escape(text)}{per} Above the dashed line, beyond tolerance.</p></section>'
    )


def _culprit_record(verdict: Mapping[str, Any], culprit: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The record that carries the evidence (``first_divergence.record``), with its unit's ``call``
    for activations and gradients (``None`` for parameters) and the layout transform applied to B."""
    record = culprit.get("record")
    if not isinstance(record, Mapping) or "role" not in record or "slot" not in record:
        return None
    call = None if record["role"] in ("parameter", "buffer", "parameter_grad", "optimizer_state") else culprit.get("call")
    transform = None
    for unit in _units(verdict):
        if all(unit.get(k) == culprit.get(k) for k in ("step", "rank", "stage", "call")) and _route_of(
            unit.get("a")
        ) == _route_of(culprit.get("a")):
            transform = next(
                (
                    r.get("transform")
                    for r in unit.get("records", [])
                    if r.get("role") == record["role"] and r.get("slot") == record["slot"]
                ),
                None,
            )
            break
    return {"role": record["role"], "slot": record["slot"], "call": call, "transform": transform}


def _find_array(
    trace: Trace, route: str, stage: str, step: int, role: str, slot: str, call: int | None
) -> tuple[int, str] | None:
    """(rank, array name) of the record of ``route`` with this stage, step, role, slot and call, if
    it kept its data (a deduplicated record names the array of its first occurrence)."""
    for rank in trace.ranks:
        part = trace.parts[rank]
        nodes = part.nodes.filter(pc.equal(part.nodes["route"], route))
        if not nodes.num_rows:
            continue
        t = part.tensors
        mask = pc.and_(pc.equal(t["node"], nodes["node"][0]), pc.equal(t["stage"], stage))
        mask = pc.and_(mask, pc.and_(pc.equal(t["step"], step), pc.equal(t["role"], role)))
        mask = pc.and_(mask, pc.equal(t["slot"], slot))
        mask = pc.and_(mask, pc.is_null(t["call"]) if call is None else pc.equal(t["call"], call))
        for row in t.filter(mask).select(["array"]).to_pylist():
            if row["array"] is not None:
                return rank, row["array"]
    return None


def _elementwise_section(
    verdict: Mapping[str, Any], culprit: Mapping[str, Any] | None, trace_a: Trace | None, trace_b: Trace | None
) -> str:
    if culprit is None:
        return ""
    if trace_a is None or trace_b is None:
        return (
            '<section><h2>Element-wise error of the culprit</h2><p class="note">Pass the two traces '
            "(<code>tracespec report VERDICT --traces A B</code>, or <code>tracespec diff A B --html</code>) "
            "to see the element-wise error.</p></section>"
        )
    record = _culprit_record(verdict, culprit)
    if record is None:
        return ""
    stage, step = str(culprit.get("stage")), int(culprit.get("step", 0))
    role, slot, call = str(record.get("role")), str(record.get("slot")), record.get("call")
    found_a = _find_array(trace_a, str(_route_of(culprit.get("a"))), stage, step, role, slot, call)
    call_b = (culprit.get("b") or {}).get("call", call) if call is not None else None
    found_b = _find_array(trace_b, str(_route_of(culprit.get("b"))), stage, step, role, slot, call_b)
    what = f"{role}[{slot}]" + (f" call {call}" if call is not None else "")
    if found_a is None or found_b is None:
        return (
            f'<section><h2>Element-wise error of the culprit</h2><p class="note">{escape(what)}: one of '
            "the traces did not keep this tensor's data (statistics or hash level).</p></section>"
        )
    transpose = "transpose" in str(record.get("transform", "")).lower()
    err = elementwise_error(trace_a, found_a[1], trace_b, found_b[1], rank_a=found_a[0], rank_b=found_b[0], transpose_b=transpose)
    if err is None:
        return ""
    return _elementwise_html(what, err)


def _elementwise_html(what: str, err: ElementwiseError) -> str:
    counts, labels = err.histogram()
    shape = "×".join(map(str, err.shape)) or "scalar"
    hist = histogram(counts, labels, title=f"|A − B| of {what}", x_label="absolute error (power of ten)")
    heat = heatmap(
        err.heatmap,
        title=f"max |A − B| per cell ({shape})",
        row_label=f"leading axes ({err.rows} rows)",
        col_label=f"last axis ({err.cols})",
    )
    facts = f"{err.count} elements, {err.zero} equal, max |A − B| = {err.max_abs:.4g}, mean |A − B| = {err.mean_abs:.4g}" + (
        f", {err.nonfinite} non-finite" if err.nonfinite else ""
    )
    return (
        f'<section id="elementwise"><h2>Element-wise error of the culprit</h2>'
        f'<p class="note">{escape(facts)}</p><div class="panels">{hist}{heat}</div></section>'
    )


def _culprit_html(culprit: Mapping[str, Any] | None, hint: str | None) -> str:
    if culprit is None:
        text = hint or "No divergence: every compared tensor is within tolerance."
        return f'<section id="culprit-box" class="pass"><h2>No divergence</h2><p>{escape(text)}</p></section>'
    route_a, route_b = _route_of(culprit.get("a")), _route_of(culprit.get("b"))
    rows = [
        ("where", f"{route_a or '(root)'}" + (f"  ↔  {route_b or '(root)'}" if route_b != route_a else "")),
        ("class", str((culprit.get("a") or {}).get("class_name", ""))),
        ("kind", str(culprit.get("kind", ""))),
        ("stage", f"{culprit.get('stage')}, step {culprit.get('step')}, rank {culprit.get('rank')}"),
    ]
    group = [
        " + ".join(str(r) or "(root)" for r in side.get("routes") or [])
        for side in (culprit.get("a") or {}, culprit.get("b") or {})
        if isinstance(side, Mapping)
    ]
    if any(group):
        rows.append((f"{culprit.get('alignment') or 'group'} group", "  ↔  ".join(group)))
    for side, label in (("a", "op called by"), ("b", "in B, called by")):
        site = (culprit.get(side) or {}).get("op_site")
        if isinstance(site, Mapping) and (side == "a" or site != (culprit.get("a") or {}).get("op_site")):
            source = site.get("source") if isinstance(site.get("source"), Mapping) else None
            where = f" at {source.get('file')}:{source.get('line')}" if source else ""
            function = f" in {source.get('function')}" if source and source.get("function") else ""
            rows.append((label, f"{site.get('module') or '(root)'}{where}{function} ({site.get('op') or 'op'})"))
    if culprit.get("evidence"):
        rows.append(("evidence", str(culprit["evidence"])))
    metrics = culprit.get("metrics") or {}
    rows.extend((k, _fmt(metrics[k])) for k in _SHOWN_METRICS if metrics.get(k) is not None)
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    hint_html = f"<p><b>Next:</b> {escape(hint)}</p>" if hint else ""
    return (
        f'<section id="culprit-box"><h2>First divergence: <span class="route">{escape(route_a or "(root)")}'
        f'</span></h2><table class="kv">{body}</table>{hint_html}</section>'
    )


def _unmatched_html(verdict: Mapping[str, Any]) -> str:
    items = [u for u in verdict.get("unmatched", []) or [] if isinstance(u, Mapping)]
    if not items:
        return ""
    shown = items[:200]
    rows = "".join(
        f'<tr><td>{escape(str(u.get("side", "")))}</td><td class="route">{escape(str(u.get("route", "")))}</td>'
        f"<td>{escape(str(u.get('reason', '')))}</td></tr>"
        for u in shown
    )
    more = f'<p class="note">… and {len(items) - len(shown)} more</p>' if len(items) > len(shown) else ""
    return f'<section><h2>Unmatched nodes ({len(items)})</h2><table class="kv">{rows}</table>{more}</section>'


def _describe_tolerances(tolerances: Mapping[str, Any]) -> str:
    """``mode norm; float32 rel RMSE 7.6e-06 rtol 1.3e-06 atol 1e-05`` (+ overrides; rel RMSE in mode norm)."""
    norm = tolerances.get("mode") == "norm"
    parts = [f"mode {tolerances.get('mode', '?')}"]
    if tolerances.get("rtol") is not None or tolerances.get("atol") is not None:
        parts.append(f"rtol {_fmt(tolerances.get('rtol'))} atol {_fmt(tolerances.get('atol'))} for every dtype")
    by_dtype = tolerances.get("by_dtype")
    if isinstance(by_dtype, Mapping):
        parts.extend(
            f"{dtype}{' rel RMSE ' + _fmt(t.get('rel_rmse')) if norm else ''} rtol {_fmt(t.get('rtol'))} atol {_fmt(t.get('atol'))}"
            for dtype, t in by_dtype.items()
            if isinstance(t, Mapping)
        )
    overrides = tolerances.get("overrides")
    if overrides:
        parts.append(f"{len(overrides)} per-route override(s)")
    return "; ".join(parts)


def _summary(verdict: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for side in ("a", "b"):
        info = verdict.get(side)
        if isinstance(info, Mapping):
            text = " ".join(str(info[k]) for k in ("path", "framework", "framework_version", "device") if info.get(k))
            rows.append((side.upper(), text))
    coverage = verdict.get("coverage")
    if isinstance(coverage, Mapping):
        ranks = coverage.get("ranks")
        for rank, doc in ranks.items() if isinstance(ranks, Mapping) else ():
            calls = doc.get("calls") if isinstance(doc, Mapping) else None
            if isinstance(calls, Mapping):
                by_method = calls.get("by_method")
                methods = by_method if isinstance(by_method, Mapping) else {}
                low = (
                    " — LOW COVERAGE: the verdict says nothing about the rest"
                    if (calls.get("fraction_a") or 0) < LOW_COVERAGE
                    else ""
                )
                rows.append(
                    (
                        f"rank {rank} calls",
                        f"compared {calls.get('compared_a')} of {calls.get('leaf_a')} leaf calls of A "
                        f"({_fmt((calls.get('fraction_a') or 0) * 100)}%), {calls.get('compared_b')} of {calls.get('leaf_b')} of B; "
                        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in methods.items() if v)
                        + low,
                    )
                )
        rows.append(("coverage", ", ".join(f"{k} {_fmt(v)}" for k, v in coverage.items() if not isinstance(v, (Mapping, list)))))
    tolerances = verdict.get("tolerances")
    if isinstance(tolerances, Mapping):
        rows.append(("tolerances", _describe_tolerances(tolerances)))
    return rows


def render_html(verdict: Mapping[str, Any], trace_a: Trace | None = None, trace_b: Trace | None = None) -> str:
    """The HTML report of ``verdict`` (a verdict document as ``tracespec diff --json`` writes it).

    Parameters
    ----------
    verdict:
        The verdict document.
    trace_a, trace_b:
        The traces it compared, for the element-wise error of the culprit and the full tree of A.
    """
    found = verdict.get("first_divergence")
    culprit = found if isinstance(found, Mapping) else None
    # over many steps, the tree is the first divergent step's (the time plot links to it)
    tree_step = culprit.get("step") if culprit and len(verdict.get("steps") or []) > 1 else None
    tree = _build_tree(verdict, trace_a, tree_step)
    culprit_route = _route_of(culprit.get("a")) if culprit else None
    if culprit is not None and culprit_route is not None and culprit_route not in tree:
        stage_result = _StageResult("diverged", str(culprit.get("kind")))
        tree[culprit_route] = _TreeNode(culprit_route, stages={str(culprit.get("stage")): stage_result})
        tree[_parent_route(culprit_route, tree) or ""].children.append(culprit_route)
    rows, culprit_index = _flatten_tree(tree, culprit_route)
    status = str(verdict.get("status", "unknown"))
    a_path = (verdict.get("a") or {}).get("path", "A") if isinstance(verdict.get("a"), Mapping) else "A"
    b_path = (verdict.get("b") or {}).get("path", "B") if isinstance(verdict.get("b"), Mapping) else "B"
    hint = verdict.get("next_step") or verdict.get("hint")
    return render_page(
        title="tracespec diff",
        status=status,
        subtitle=f"A = {a_path}   B = {b_path}",
        summary=_summary(verdict),
        culprit_html=_culprit_html(culprit, str(hint) if hint else None),
        growth_svg=_growth_svg(verdict, tree, culprit),
        timeline_html=_timeline_svg(verdict),
        tree_step=tree_step,
        elementwise_html=_elementwise_section(verdict, culprit, trace_a, trace_b),
        unmatched_html=_unmatched_html(verdict),
        tree_nodes=rows,
        culprit=culprit_index,
    )


def write_html(
    path: str | os.PathLike[str], verdict: Mapping[str, Any], trace_a: Trace | None = None, trace_b: Trace | None = None
) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8) and return the path."""
    out = Path(path)
    out.write_text(render_html(verdict, trace_a, trace_b), encoding="utf-8")
    return out
