"""Crash safety: a recording process killed with SIGKILL leaves a valid, incomplete trace that
holds every record it had flushed, exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tracespec import load_trace, validate_trace

RECORDER = r"""
import json, sys
import numpy as np
from tracespec import TraceWriter

def tensor(step, i):
    return np.random.default_rng(step * 10 + i).standard_normal((64, 1024)).astype(np.float32)

writer = TraceWriter(sys.argv[1], framework="numpy", flush_interval=0.01, chunk_limit=64 << 10)
node = writer.add_node("", "Model")
step = 0
while True:  # until killed
    ids = [writer.add_tensor(step=step, stage="forward", node=node, call=i, role="output", slot="0",
                             array=tensor(step, i)) for i in range(4)]
    writer.add_call(step=step, stage="forward", node=node, call=0, begin=0, end=1)
    writer.end_step(step)
    writer.flush()
    print(json.dumps({"step": step, "ids": ids}), flush=True)
    step += 1
"""


def tensor(step: int, i: int) -> np.ndarray:
    return np.random.default_rng(step * 10 + i).standard_normal((64, 1024)).astype(np.float32)


@pytest.mark.parametrize("steps_before_kill", [1, 6])
def test_sigkill_leaves_valid_incomplete_trace_with_every_flushed_record(tmp_path: Path, steps_before_kill: int) -> None:
    folder = tmp_path / "t"
    flushed: list[dict[str, object]] = []
    with subprocess.Popen([sys.executable, "-c", RECORDER, str(folder)], stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            flushed.append(json.loads(line))
            if len(flushed) == steps_before_kill:
                break
        time.sleep(0.003 * steps_before_kill)  # land the kill in the middle of the next step
        os.kill(child.pid, signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL
    assert len(flushed) == steps_before_kill, "the recorder died before flushing"

    report = validate_trace(folder, deep=True)
    assert not report.complete
    trace = load_trace(folder)
    rows = {row["id"]: row for row in trace.tensors().to_pylist()}
    for entry in flushed:
        step = int(entry["step"])  # type: ignore[call-overload]
        assert step in trace.steps
        for i, record_id in enumerate(entry["ids"]):  # type: ignore[arg-type]
            row = rows[record_id]
            assert (row["step"], row["call"]) == (step, i)
            np.testing.assert_array_equal(trace.read(0, row["array"]), tensor(step, i), strict=True)
