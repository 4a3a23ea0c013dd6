"""The README demo: record a small model into a trace, validate it and show it.

Until the framework adapters land this uses the writer API directly on a numpy MLP.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import tracespec

OUT = Path("runs/demo_numpy")


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 2)).astype(np.float32)
    shutil.rmtree(OUT, ignore_errors=True)
    with tracespec.TraceWriter(OUT, framework="numpy", framework_version=np.__version__) as w:
        root = w.add_node("", "MLP")
        fc1 = w.add_node("fc1", "Linear", parent=root, position=0)
        fc2 = w.add_node("fc2", "Linear", parent=root, position=1)
        h = np.maximum(x @ w1, 0)
        y = h @ w2
        for node, name, param in ((fc1, "weight", w1), (fc2, "weight", w2)):
            w.add_tensor(step=0, stage="forward", node=node, role="parameter", slot=name, array=param)
        x_id = w.add_tensor(step=0, stage="forward", node=root, call=0, role="input", slot="0", array=x)
        w.add_tensor(step=0, stage="forward", node=fc1, call=0, role="input", slot="0", same_as=x_id)
        h_id = w.add_tensor(step=0, stage="forward", node=fc1, call=0, role="output", slot="0", array=h)
        w.add_tensor(step=0, stage="forward", node=fc2, call=0, role="input", slot="0", same_as=h_id)
        y_id = w.add_tensor(step=0, stage="forward", node=fc2, call=0, role="output", slot="0", array=y)
        w.add_tensor(step=0, stage="forward", node=root, call=0, role="output", slot="0", same_as=y_id)
        for order, node in enumerate((fc1, fc2)):
            w.add_call(step=0, stage="forward", node=node, call=0, begin=order + 1, end=order + 1)
        w.add_call(step=0, stage="forward", node=root, call=0, begin=0, end=3)
        w.end_step(0)
    tracespec_cli = [sys.executable, "-m", "tracespec.cli"]
    subprocess.run([*tracespec_cli, "validate", str(OUT)], check=True)
    subprocess.run([*tracespec_cli, "show", str(OUT), "--role", "input", "--role", "output"], check=True)


if __name__ == "__main__":
    main()
