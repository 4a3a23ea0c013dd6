"""The examples of docs/format.md run as written: write a trace, read it with tracespec, read it
without tracespec (in an interpreter that never imports it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "format.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_three_examples_run_in_order(tmp_path: Path) -> None:
    write, read, plain = python_blocks()
    out = subprocess.run([sys.executable, "-c", write + read], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "complete>" in out and "weight parameter float32 (3, 4)" in out
    probe = plain + "\nimport sys\nassert not any(m.startswith('tracespec') for m in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert "0 'fc' parameter weight float32 (3, 4)" in lines
    assert "0 '' output 0 float32 (3, 3)" in lines  # the deduplicated record reads the shared array
    assert len(lines) == 3  # the statistics-only record has no array
