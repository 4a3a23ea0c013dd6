"""The paddle.Model callback: a real paddle.Model fitted for a few batches; the steps it recorded
diff clean against a plain tracespec.record of the same steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest
from click.testing import CliRunner

import tracespec
from tracespec.cli import cli
from tracespec.integrations.paddle_hapi import TracespecCallback

# paddle.Model's own input handling hands tensors to paddle.to_tensor, which warns about it
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")

STEPS, BATCH = 3, 4


class Data(paddle.io.Dataset):  # type: ignore[misc]
    def __init__(self) -> None:
        rng = np.random.default_rng(3)
        self.x = rng.standard_normal((STEPS * BATCH, 6)).astype(np.float32)
        self.y = rng.integers(0, 3, (STEPS * BATCH, 1)).astype(np.int64)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.x[i], self.y[i]

    def __len__(self) -> int:
        return len(self.x)


def network() -> paddle.nn.Layer:
    paddle.seed(0)
    return paddle.nn.Sequential(paddle.nn.Linear(6, 16), paddle.nn.ReLU(), paddle.nn.Linear(16, 3))


def fit_with_callback(path: Path, **options: object) -> None:
    net = network()
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.Adam(learning_rate=1e-2, parameters=net.parameters()), paddle.nn.CrossEntropyLoss())
    model.fit(Data(), epochs=1, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[TracespecCallback(path, **options)])


def fit_plainly(path: Path) -> None:
    net = network()
    optimizer = paddle.optimizer.Adam(learning_rate=1e-2, parameters=net.parameters())
    loss_fn = paddle.nn.CrossEntropyLoss()
    data = Data()
    with tracespec.record(net, path, optimizer=optimizer) as rec:
        for step in range(STEPS):
            x, y = (paddle.to_tensor(a[step * BATCH : (step + 1) * BATCH]) for a in (data.x, data.y))
            loss_fn(net(x), y).backward()
            optimizer.step()
            optimizer.clear_grad()
            rec.step()


def test_the_callback_records_what_a_plain_recording_does(tmp_path: Path) -> None:
    fit_with_callback(tmp_path / "callback")
    fit_plainly(tmp_path / "plain")
    trace = tracespec.load_trace(tmp_path / "callback")
    assert trace.complete and trace.steps == [0, 1, 2]
    assert set(trace.tensors()["stage"].to_pylist()) == {"forward", "backward", "update"}
    result = CliRunner().invoke(
        cli, ["diff", str(tmp_path / "plain"), str(tmp_path / "callback"), "--json", str(tmp_path / "v.json"), "--no-progress"]
    )
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert result.exit_code == 0 and verdict["status"] == "pass", verdict["first_divergence"]
    assert verdict["summary"]["diverged"] == 0 and verdict["coverage"]["ranks"]["0"]["calls"]["fraction_a"] == 1.0


def test_chosen_steps_only(tmp_path: Path) -> None:
    fit_with_callback(tmp_path / "some", steps=[2])
    assert tracespec.load_trace(tmp_path / "some").steps == [2]
