"""The training-loop examples run as a user runs them and find the change they make."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "training_loops"


@pytest.mark.parametrize(
    ("script", "found"),
    [
        ("hf_trainer.py", "first divergence in backward, step 0, rank 0: lm_head (Linear) INTRODUCED it"),
        ("paddle_model.py", "first divergence in update, step 0, rank 0: 0 (Linear) INTRODUCED it"),
    ],
)
def test_example_finds_the_change(script: str, found: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--out", str(tmp_path / "runs")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert found in done.stdout
