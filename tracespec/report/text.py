"""The verdict as text for a terminal (``tracespec diff``): coverage, the culprit and the path to
it, the worst nodes, how the error grows, and over many steps a timeline.

:mod:`tracespec.report.render` writes the same verdict as an HTML page.
"""

from __future__ import annotations

import math
from typing import Any

import click

from tracespec.compare import Verdict
from tracespec.compare.calls import LOW_COVERAGE
from tracespec.compare.verdict import culprit_units, describe_metrics, describe_side, format_number, source_line

__all__ = ["render_text"]

_MARK = {"pass": "✓", "pass_within_tolerance": "≈", "diverged": "✗", "skipped": "·"}
_GROWTH_ROWS = 24
_SPARK = "▁▂▃▄▅▆▇█"
_SPARK_WIDTH = 60
_SPARK_FLOOR = -3.0
"""log10 of the smallest ratio to tolerance drawn above the lowest bar (1e-3: agreement well within
tolerance); a ratio of 1 or more (beyond tolerance) is drawn in red."""


def _dtype_tolerance(dtype: str, tolerance: dict[str, Any], mode: str) -> str:
    """``float32 rel RMSE 7.6e-06, rtol 1.3e-06, atol 1e-05 × RMS`` (rel RMSE in mode norm only)."""
    norm = f" rel RMSE {tolerance['rel_rmse']:.2g}," if mode == "norm" else ""
    scaled = " × RMS" if tolerance["atol_scaled"] else ""
    return f"{dtype}{norm} rtol {tolerance['rtol']:.2g}, atol {tolerance['atol']:.2g}{scaled}"


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
        lines.append(
            f"  {(point['route'] or '(root)') + call:<{width + 3}} {format_number(rel):>9}  {_MARK[point['status']]} {bar}"
        )
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
    title = (
        f"Over {len(series)} steps ({series[0]['step']} to {series[-1]['step']}; worst ratio to tolerance per "
        f"step, log scale{per}):"
    )
    lines = [title, f"  {line}"]
    diverged = [p for p in series if p["diverged"]]
    if diverged:
        first = diverged[0]
        culprit = first["first"]
        where = (
            f"; {culprit['route'] or '(root)'} ({culprit['class_name']}) {culprit['kind']} it in {culprit['stage']}"
            if culprit
            else ""
        )
        lines.append(
            f"  first divergent step {first['step']}: {first['diverged']} of {first['records']} record pairs "
            f"diverged{where}; {len(diverged)} of {len(series)} steps diverge"
        )
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
        lines.append(
            f"  {item['stage']} {item['route'] or '(root)'} ({item['class_name']}) {item['role']}[{item['slot']}]: "
            f"{item['count']} kink flip(s) where {item['where']}"
        )
    if inherited:
        worst = max(inherited, key=lambda b: b["rel_rmse"])
        lines.append(
            f"  {len(inherited)} tensor(s) inherited them (worst rel RMSE {format_number(worst['rel_rmse'])} at "
            f"{worst['route'] or '(root)'} {worst['role']}[{worst['slot']}])"
        )
    return lines


def render_text(verdict: Verdict, top: int = 5, brief: bool = False) -> str:
    """The terminal report of a verdict (what ``tracespec diff`` prints); ``brief``: without the
    worst nodes, the error growth, benign differences, tolerances and the unmatched list."""
    out: list[str] = []
    a, b = verdict.a, verdict.b
    out.append(
        f"A {a['path']} ({a['framework']} {a['framework_version'] or ''})".rstrip()
        + f"  vs  B {b['path']} ({b['framework']} {b['framework_version'] or ''})".rstrip()
    )
    incomplete = [side for side, trace in (("A", a), ("B", b)) if not trace["complete"]]
    for side in incomplete:
        cut = [
            f"{what} {verdict.coverage.get(f'{what}_only_{other}')}"
            for what in ("steps", "ranks")
            for other in ("a", "b")
            if verdict.coverage.get(f"{what}_only_{other}") and other != side.lower()
        ]
        out.append(
            click.style(
                f"warning: {side} is INCOMPLETE (a writer did not close); compared what both hold"
                + (f"; not compared: {', '.join(cut)} (only in {'B' if side == 'A' else 'A'})" if cut else ""),
                fg="yellow",
                bold=True,
            )
        )
    low = []
    for rank, cov in verdict.coverage["ranks"].items():
        calls = cov["calls"]
        methods = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in calls["by_method"].items() if v)
        out.append(
            f"rank {rank}: compared {calls['compared_a']} of {calls['leaf_a']} leaf calls of A ({calls['fraction_a']:.0%}) "
            f"and {calls['compared_b']} of {calls['leaf_b']} of B ({calls['fraction_b']:.0%})"
            + (f"; aligned by {methods}" if methods else "")
        )
        for side, other in (("A", "B"), ("B", "A")):
            if calls.get(f"boundary_{side.lower()}"):
                out.append(
                    f"  {calls[f'boundary_{side.lower()}']} of {side}'s leaf calls compared only at the boundary of a call "
                    f"that holds several of them, where {other} records no call inside (a region compiled as one graph, "
                    "a module recorded without its children)"
                )
        if calls["fraction_a"] < LOW_COVERAGE:
            low.append(f"rank {rank}: {calls['fraction_a']:.0%}")
    if low:
        out.append(
            click.style(
                f"warning: LOW COVERAGE ({', '.join(low)} of A's leaf calls compared): the verdict says nothing about the rest. "
                "Read 'Unmatched' below; write the alignment found with --save-map map.yaml, correct it, and pass it back "
                "with --layer-map map.yaml.",
                fg="yellow",
                bold=True,
            )
        )
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
        out.append(
            click.style("PASS", fg="green", bold=True)
            + f": no divergence{share}"
            + (click.style(f" ({', '.join(caveats)}, see above)", fg="yellow", bold=True) if caveats else "")
        )
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
            out.append(
                f"  ({first['alignment']}: compared at the group's boundary, the first member's inputs and the last one's outputs)"
            )
        if first["record"]:
            mismatch = first.get("mismatch")
            measured = (
                (
                    f"shape {mismatch['shape']['a']} {mismatch['dtype']['a']} in A, "
                    f"{mismatch['shape']['b']} {mismatch['dtype']['b']} in B"
                )
                if mismatch
                else describe_metrics(first["metrics"], verdict.tolerances)
            )
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
                out.append(
                    f"  {item['stage']:<8} {item['route'] or '(root)'}  ×{format_number(ratio)}  {item['divergence'] or ''}"
                )
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
    out.append(
        f"Tolerances: mode {tol['mode']}{slack}"
        + (f"; {by_dtype}" if by_dtype else "")
        + (f"; {len(tol['overrides'])} route override(s)" if tol["overrides"] else "")
    )
    if tol.get("baseline"):
        base = tol["baseline"]
        out.append(
            f"Baseline {base['path']}: {base['records']} tensor(s) allowed up to ×{base['factor']:g} "
            "their measured noise |A - A2| (the 'baseline' of each record in --json)"
        )
    if verdict.unmatched:
        out.append(f"Unmatched nodes: {len(verdict.unmatched)}")
        for item in verdict.unmatched[:5]:
            call = f" call {item['call']}" if item.get("call") else ""
            out.append(f"  {item['side'].upper()} {item['route'] or '(root)'}{call} ({item['class_name']}): {item['reason']}")
        if len(verdict.unmatched) > 5:
            out.append(f"  … {len(verdict.unmatched) - 5} more in --json")
    out.append("Next: " + verdict.hint)
    return "\n".join(out)
