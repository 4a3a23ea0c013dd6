"""Jupyter display and tables: a Verdict and a Trace render themselves as HTML fragments (drawn in
headless Chromium, no console errors), and give tables to filter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from report_browser import CULPRIT

import tracespec
from tracespec.compare import Verdict

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
</head><body>{}</body></html>"""


def test_a_verdict_and_a_trace_display_in_a_notebook(bug_traces: dict[str, Any], open_page: Any, tmp_path: Path) -> None:
    verdict = Verdict.from_json(bug_traces["verdict"])
    trace = tracespec.load_trace(bug_traces["a"])
    page = tmp_path / "notebook.html"
    page.write_text(PAGE.format(verdict._repr_html_() + trace._repr_html_()), encoding="utf-8")
    shown = open_page(page)
    assert shown.console == []
    dom = shown.dom
    assert "First divergence" in dom and f"{CULPRIT} (Linear)</span> — introduced" in dom  # the path to the culprit
    assert "Layer by layer: relative RMSE" in dom and "<svg" in dom  # the error-growth plot (full capture)
    assert "tracespec trace" in dom and "rank 0" in dom and "blocks.2.mlp.fc1" in dom  # the trace: ranks, tree
    assert "<script" not in verdict._repr_html_() + trace._repr_html_()


def test_verdict_and_trace_give_tables_to_filter(bug_traces: dict[str, Any]) -> None:
    verdict = Verdict.from_json(bug_traces["verdict"])
    table = verdict.to_arrow()
    assert table.num_rows == sum(len(unit["records"]) for unit in verdict.nodes)
    diverged = table.filter(pa.compute.equal(table["divergence"], "introduced"))
    assert set(diverged["route_a"].to_pylist()) >= {CULPRIT}
    frame = verdict.to_pandas()
    worst = frame.sort_values("tolerance_ratio", ascending=False).iloc[0]
    assert worst["status"] == "diverged" and worst["stage"] in ("forward", "backward")
    records = tracespec.load_trace(bug_traces["a"]).records(role="output", route="blocks.2.*")
    assert records.num_rows > 0 and set(records["route"].to_pylist()) <= {
        "blocks.2",
        "blocks.2.norm",
        "blocks.2.mlp",
        "blocks.2.mlp.fc1",
        "blocks.2.mlp.act",
        "blocks.2.mlp.fc2",
    }
    assert set(records["role"].to_pylist()) == {"output"}
