"""The report's divergence-over-time plot, rendered in headless Chromium (issue 22)."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner
from report_browser import run_chromium
from test_compare.training_runs import NUDGED_LAYER, record_training

from tracespec.cli import cli

NUDGE = 20


def test_time_plot_marks_the_first_divergent_step_and_links_to_its_tree(tmp_path: Path) -> None:
    a = record_training(tmp_path / "a", steps=40, nudge_step=None, blocks=3)
    b = record_training(tmp_path / "b", steps=40, nudge_step=NUDGE, blocks=3)
    report = tmp_path / "report.html"
    done = CliRunner().invoke(cli, ["diff", str(a), str(b), "--html", str(report)])
    assert done.exit_code == 1, done.output
    html = report.read_text()
    plot = html.split('<section id="timeline">')[1].split("</section>")[0]
    assert "Divergence over time: 40 steps" in plot and f'data-step="{NUDGE}"' in plot
    assert f"First divergent step {NUDGE}:" in plot and "tolerance" in plot
    assert plot.count('stroke="#dc2626"') >= 1  # the steps that diverged, in red
    assert f"Module tree at step {NUDGE}" in html
    # what a click on the marked step does: the page follows #step=N to that step's tree
    dom, console = run_chromium(report.resolve().as_uri() + f"#step={NUDGE}", "--dump-dom")
    assert console == []
    assert re.search(rf'<body[^>]*data-step="{NUDGE}"', dom) and 'data-rendered="true"' in dom
    culprit = dom.split('id="culprit-node"')[1].split("</li>")[0]
    assert f'title="{NUDGED_LAYER}"' in culprit and "introduced" in culprit
