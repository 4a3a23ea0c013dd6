"""The README's main job: PyTorch vs a Paddle port, the porting bug named; the fixed port passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    done = subprocess.run([sys.executable, str(DEMO), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    verdict = json.loads((tmp_path / "runs" / "demo_verdict.json").read_text())
    return done, verdict


def test_demo_names_the_porting_bug(tmp_path: Path) -> None:
    done, verdict = _run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    first = verdict["first_divergence"]
    assert verdict["status"] == "fail"
    assert (first["stage"], first["kind"]) == ("forward", "introduced")
    assert (first["a"]["route"], first["b"]["route"]) == ("blocks.1.mlp.act", "layers.1.ffn.act")
    assert "blocks.1.mlp.act (GELU) INTRODUCED it" in done.stdout
    # a first contact that fits on a screen (bash .ci/demo adds one line per set-up stage, once)
    assert len((done.stdout + done.stderr).splitlines()) <= 30
    assert (tmp_path / "runs" / "demo_report.html").exists()


def test_demo_fixed_port_passes_forward_and_backward(tmp_path: Path) -> None:
    done, verdict = _run(tmp_path, "--fixed")
    assert done.returncode == 0, done.stdout + done.stderr
    assert verdict["status"] == "pass" and verdict["first_divergence"] is None
    assert "PASS" in done.stdout
