"""The HTML report: opened in headless Chromium, checked for content, not only for existence."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner
from PIL import Image
from report_browser import CULPRIT, run_chromium

import tracespec
from tracespec.cli import cli
from tracespec.report import elementwise as elementwise_module
from tracespec.report import render_html, write_html
from tracespec.report.elementwise import elementwise_error
from tracespec.report.page import CHILD_PAGE


class _CulpritRow(HTMLParser):
    """Text and title of the row of ``<li id="culprit-node">``, and the number of ``<li>`` shown."""

    def __init__(self) -> None:
        super().__init__()
        self.items = 0
        self.depth = 0  # element depth inside the culprit's row, 0 when outside it
        self.in_culprit_li = False
        self.title: str | None = None
        self.text: list[str] = []
        self.culprit_classes: str = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "li":
            self.items += 1
            if a.get("id") == "culprit-node":
                self.in_culprit_li = True
                self.culprit_classes = a.get("class") or ""
        elif self.in_culprit_li and tag == "div" and self.depth == 0 and "row" in (a.get("class") or ""):
            self.depth = 1
            self.title = a.get("title")
        elif self.depth:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1
            if self.depth == 0:
                self.in_culprit_li = False

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.text.append(data)


def _parse(dom: str) -> _CulpritRow:
    parser = _CulpritRow()
    parser.feed(dom)
    return parser


def test_verdict_names_the_injected_bug(bug_traces: dict[str, Any]) -> None:
    first = bug_traces["verdict"]["first_divergence"]
    assert first["a"]["route"] == CULPRIT and first["kind"] == "introduced"


def test_report_renders_in_chromium_with_the_culprit_highlighted(
    bug_traces: dict[str, Any], open_page: Any, tmp_path: Path
) -> None:
    trace_a, trace_b = tracespec.load_trace(bug_traces["a"]), tracespec.load_trace(bug_traces["b"])
    page = open_page(write_html(tmp_path / "report.html", bug_traces["verdict"], trace_a, trace_b))
    assert page.console == []
    assert 'data-rendered="true"' in page.dom
    row = _parse(page.dom)
    assert "culprit" in row.culprit_classes
    assert row.title == CULPRIT
    text = " ".join(row.text)
    assert CULPRIT in text and "introduced" in text
    # the tree opens only along the path to the culprit: the rest stays collapsed
    assert row.items < 25
    assert '<section id="elementwise">' in page.dom


def test_screenshot_shows_the_tree_and_the_plot(bug_traces: dict[str, Any], tmp_path: Path) -> None:
    trace_a, trace_b = tracespec.load_trace(bug_traces["a"]), tracespec.load_trace(bug_traces["b"])
    report = write_html(tmp_path / "report.html", bug_traces["verdict"], trace_a, trace_b)
    shot = tmp_path / "report.png"
    _, console = run_chromium(report.resolve().as_uri(), f"--screenshot={shot}", "--window-size=1400,1600", "--hide-scrollbars")
    assert console == []
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (1600, 1400)
    colors = {tuple(c) for c in image.reshape(-1, 3)[::7]}
    assert len(colors) > 200  # text, badges and plots, not a blank page

    def area(hex_color: str) -> int:
        rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(image.astype(int) - rgb).sum(axis=-1) <= 6).sum())

    half = image.shape[1] * 44 // 100  # the tree is the left column, the plots the right one
    assert area("#fde68a") > 500  # the highlighted culprit row (and the shaded band of the plot)
    left = image[:, :half]
    right = image[:, half:]
    for badge in ((5, 150, 105), (220, 38, 38), (217, 119, 6)):  # pass, introduced, inherited badges
        assert (np.abs(left.astype(int) - np.array(badge)).sum(axis=-1) <= 6).sum() > 100
    assert (np.abs(right.astype(int) - np.array([37, 99, 235])).sum(axis=-1) <= 6).sum() > 200  # the error curve


def test_page_is_self_contained(bug_traces: dict[str, Any]) -> None:
    html = render_html(bug_traces["verdict"])
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    for needle in ("src=", "href=", "@import", "url(", "fetch(", "XMLHttpRequest"):
        assert needle not in html
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}  # SVG namespace only


def test_untrusted_routes_are_escaped(bug_traces: dict[str, Any], open_page: Any, tmp_path: Path) -> None:
    hostile = '</script><script>console.error("pwned")</script><img src=x onerror=alert(1)>'
    verdict = copy.deepcopy(bug_traces["verdict"])
    for unit in verdict["nodes"]:
        if unit["a"]["route"] == CULPRIT:
            unit["a"]["route"] = CULPRIT + hostile
    verdict["first_divergence"]["a"]["route"] = CULPRIT + hostile
    page = open_page(write_html(tmp_path / "hostile.html", verdict))
    assert page.console == []
    row = _parse(page.dom)
    assert row.title == CULPRIT + hostile
    assert "<img" not in page.dom.split('id="culprit-node"')[1].split("</li>")[0]


def test_a_large_tree_stays_collapsed_and_filters(bug_traces: dict[str, Any], open_page: Any, tmp_path: Path) -> None:
    verdict = copy.deepcopy(bug_traces["verdict"])
    template = next(u for u in verdict["nodes"] if u["a"]["route"] == "blocks.0.mlp.fc1")
    for layer in range(400):
        for part in ("q", "k", "v", "o", "fc1", "fc2"):
            unit = copy.deepcopy(template)
            unit["a"]["route"] = unit["b"]["route"] = f"wide.{layer}.{part}"
            verdict["nodes"].append(unit)
    report = write_html(tmp_path / "large.html", verdict)
    page = open_page(report)
    # 2400 nodes hang from the root: it opens one page of children, then a "show more" button
    assert page.console == [] and _parse(page.dom).items <= CHILD_PAGE + 30
    assert "show 200 more of" in page.dom
    filtered = open_page(report, "#filter=wide.13.")
    assert filtered.console == []
    assert filtered.dom.count('title="wide.13.') == 6 and "6 matches" in filtered.dom  # shown flat
    everything = open_page(report, "#filter=wide.")
    assert _parse(everything.dom).items == 500 and "500 of 2400 matches shown" in everything.dom


def test_elementwise_error_streams_in_blocks(tmp_path: Path, monkeypatch: Any) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 5, 11)).astype(np.float32)
    b = a + (rng.standard_normal(a.shape) * 10.0 ** rng.integers(-9, -1, a.shape)).astype(np.float32)
    b[3, 2, 1] = np.nan
    names = {}
    for side, array in (("a", a), ("b", b)):
        with tracespec.TraceWriter(tmp_path / side, framework="numpy") as w:
            node = w.add_node("", "M")
            w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=array)
            w.end_step(0)
        names[side] = tracespec.load_trace(tmp_path / side).tensors().to_pylist()[0]["array"]
    ta, tb = tracespec.load_trace(tmp_path / "a"), tracespec.load_trace(tmp_path / "b")
    whole = elementwise_error(ta, names["a"], tb, names["b"])
    monkeypatch.setattr(elementwise_module, "BLOCK_BYTES", 5 * 11 * 4 * 3)  # three leading rows per block
    streamed = elementwise_error(ta, names["a"], tb, names["b"])
    assert whole == streamed
    err = np.abs(a.astype(np.float64) - b.astype(np.float64))
    finite = err[np.isfinite(err)]
    assert whole.count == a.size and whole.nonfinite == 1
    assert whole.zero == int((finite == 0).sum())
    assert sum(whole.decade_counts) + whole.zero == finite.size
    assert np.isinf(whole.max_abs)
    heat = np.array(whole.heatmap)
    assert heat.shape == (37 * 5 // 1 if 37 * 5 <= 48 else 48, 11)
    assert np.isinf(heat).sum() == 1


def test_report_command(bug_traces: dict[str, Any], tmp_path: Path) -> None:
    verdict_file = tmp_path / "verdict.json"
    verdict_file.write_text(json.dumps(bug_traces["verdict"]))
    out = tmp_path / "r.html"
    runner = CliRunner()
    done = runner.invoke(
        cli, ["report", str(verdict_file), "-o", str(out), "--traces", str(bug_traces["a"]), str(bug_traces["b"])]
    )
    assert done.exit_code == 0, done.output
    assert CULPRIT in out.read_text() and 'id="elementwise"' in out.read_text()
    broken = tmp_path / "broken.json"
    broken.write_text('{"status": "fail"}')
    done = runner.invoke(cli, ["report", str(broken), "-o", str(out)])
    assert done.exit_code == 3 and "verdict_invalid" in done.output
    assert runner.invoke(cli, ["report", "--help"]).exit_code == 0


def test_importing_the_report_imports_no_framework() -> None:
    code = (
        "import sys, tracespec.report, tracespec.cli.report; print(sorted({'torch', 'paddle', 'onnxruntime'} & set(sys.modules)))"
    )
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


def test_diff_writes_the_html_report(bug_traces: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "diff.html"
    done = CliRunner().invoke(cli, ["diff", str(bug_traces["a"]), str(bug_traces["b"]), "--html", str(out)])
    assert done.exit_code == 1, done.output
    html = out.read_text()
    assert f'"{CULPRIT}"' in html and 'id="elementwise"' in html and "First divergence" in html


def test_elementwise_error_brings_b_into_a_layout(tmp_path: Path) -> None:
    weight = np.arange(15, dtype=np.float32).reshape(3, 5)  # PyTorch's [out, in]
    names = {}
    for side, array in (("a", weight), ("b", np.ascontiguousarray(weight.T))):  # Paddle's [in, out]
        with tracespec.TraceWriter(tmp_path / side, framework="numpy") as w:
            node = w.add_node("", "Linear")
            w.add_tensor(step=0, stage="forward", node=node, role="parameter", slot="weight", array=array)
            w.end_step(0)
        names[side] = tracespec.load_trace(tmp_path / side).tensors().to_pylist()[0]["array"]
    ta, tb = tracespec.load_trace(tmp_path / "a"), tracespec.load_trace(tmp_path / "b")
    assert elementwise_error(ta, names["a"], tb, names["b"]) is None  # shapes do not pair as stored
    same = elementwise_error(ta, names["a"], tb, names["b"], transpose_b=True)
    assert same is not None and same.zero == 15 and same.max_abs == 0.0
