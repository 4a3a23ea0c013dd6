"""What a :class:`~tracespec.Verdict` and a :class:`~tracespec.Trace` show in Jupyter
(``_repr_html_``): HTML fragments made of the report's pieces, offline, without scripts.

Constraints: a fragment lives inside someone else's page (a notebook), so its styles are scoped
under ``.tracespec-nb`` and it runs no script; strings from traces are escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any, Final

from tracespec.compare.verdict import culprit_units, describe_side
from tracespec.compare.view import read_node
from tracespec.report.render import _build_tree, _culprit_html, _growth_svg, _summary, _unit_error, _units
from tracespec.storage import Trace

__all__ = ["trace_fragment", "verdict_fragment"]

_CSS: Final = """
.tracespec-nb { font: 13px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #111827; max-width: 1100px; }
.tracespec-nb .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; }
.tracespec-nb .badge.pass { background: #059669; } .tracespec-nb .badge.fail { background: #dc2626; }
.tracespec-nb .badge.incomplete { background: #d97706; }
.tracespec-nb table.kv { border-collapse: collapse; margin: 4px 0 8px; }
.tracespec-nb table.kv td { padding: 1px 10px 1px 0; vertical-align: top; text-align: left; }
.tracespec-nb table.kv td:first-child { color: #6b7280; white-space: nowrap; }
.tracespec-nb section { border-left: 4px solid #dc2626; padding: 4px 12px; margin: 8px 0; }
.tracespec-nb section.pass { border-left-color: #059669; }
.tracespec-nb h2 { font-size: 14px; margin: 4px 0; }
.tracespec-nb .route, .tracespec-nb code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
.tracespec-nb ul.path { list-style: none; padding-left: 0; margin: 4px 0; }
.tracespec-nb ul.path li { white-space: nowrap; }
.tracespec-nb .note { color: #6b7280; font-size: 12px; }
.tracespec-nb svg.plot { width: 100%; max-width: 900px; height: auto; display: block; }
"""

_TREE_LINES: Final = 40
"""A trace shows at most this many nodes of its tree (the rest is one line)."""


def _frame(title: str, status: str, body: str) -> str:
    return (
        f'<div class="tracespec-nb"><style>{_CSS}</style><h2>{escape(title)} '
        f'<span class="badge {escape(status)}">{escape(status)}</span></h2>{body}</div>'
    )


def _kv(rows: list[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows) + "</table>"


def _path_to_culprit(verdict: Mapping[str, Any]) -> str:
    """The culprit's ancestors, outermost first, each with its status at the culprit's step and stage."""
    units, chain = culprit_units(dict(verdict))
    items = []
    for depth, route in enumerate(chain):
        unit = units[route]
        label = unit["divergence"] or unit["status"].replace("_", " ")
        items.append(
            f'<li style="padding-left:{16 * depth}px"><span class="route">{escape(describe_side(unit["a"]))}</span> '
            f"— {escape(label)}</li>"
        )
    return f'<h2>Path to the first divergence ({escape(verdict["first_divergence"]["stage"])})</h2><ul class="path">{"".join(items)}</ul>'


def verdict_fragment(verdict: Mapping[str, Any]) -> str:
    """The verdict's summary, its culprit and the path to it, and the error-growth plot."""
    culprit = verdict.get("first_divergence")
    tree = _build_tree(verdict, None)
    body = [_kv(_summary(verdict)), _culprit_html(culprit, verdict.get("hint"))]
    if culprit is not None:
        body.append(_path_to_culprit(verdict))
    if any(_unit_error(unit) for unit in _units(verdict)):
        body.append(_growth_svg(verdict, tree, culprit))
    else:
        body.append('<p class="note">No error-growth plot: the traces kept statistics, not data (capture="full" draws it).</p>')
    a, b = verdict["a"]["path"], verdict["b"]["path"]
    return _frame(f"tracespec diff {a} {b}", str(verdict["status"]), "".join(body))


def trace_fragment(trace: Trace) -> str:
    """The trace's manifest, its ranks, and the top of its module tree (with source lines of ops)."""
    m = trace.manifest
    rows = [
        ("framework", f"{m.framework} {m.framework_version or ''}".strip()),
        ("created", m.created),
        ("ranks", f"{trace.ranks} of world size {m.world_size}"),
        ("steps", str(trace.steps)),
        ("capture", ", ".join(f"{k} {v}" for k, v in m.capture.items() if v not in (None, [], {}))),
    ]
    for rank, part in sorted(trace.parts.items()):
        rows.append(
            (
                f"rank {rank}",
                f"{part.manifest.device}, {part.tensors.num_rows} records, "
                f"{part.manifest.store_bytes / 1e6:.1f} MB of data, " + ("complete" if part.manifest.complete else "INCOMPLETE"),
            )
        )
    first_rank = trace.ranks[0] if trace.ranks else 0
    lines = []
    if trace.ranks:
        nodes = trace.parts[first_rank].nodes.to_pylist()
        depth: dict[int, int] = {}
        for node in nodes:  # pre-order: a parent comes before its children
            depth[node["node"]] = 0 if node["parent"] is None else depth.get(node["parent"], 0) + 1
        for node in nodes[:_TREE_LINES]:
            lines.append(
                f'<li style="padding-left:{16 * depth[node["node"]]}px"><span class="route">'
                f"{escape(node['route'] or '(root)')}</span> {escape(node['class_name'])}{_source(trace, first_rank, node)}</li>"
            )
        if len(nodes) > _TREE_LINES:
            lines.append(
                f'<li class="note">… {len(nodes) - _TREE_LINES} more nodes (tracespec show {escape(str(trace.path))})</li>'
            )
    tree = f'<h2>Module tree (rank {first_rank})</h2><ul class="path">{"".join(lines)}</ul>' if lines else ""
    return _frame(f"tracespec trace {trace.path}", "pass" if trace.complete else "incomplete", _kv(rows) + tree)


def _source(trace: Trace, rank: int, row: dict[str, Any]) -> str:
    source = read_node(trace, rank, row).source
    return f' <span class="note">at {escape(str(source))}</span>' if source else ""
