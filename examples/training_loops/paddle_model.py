"""Record a ``paddle.Model.fit`` run with tracespec, then check a change against it.

A small classifier is fitted for 4 batches twice with ``TracespecCallback``: once as the reference,
once with the learning rate of a stale config. ``tracespec diff`` names the first step and stage
where the runs part: the first optimizer update.

    .venv/bin/python examples/training_loops/paddle_model.py [--out runs/paddle_model]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle

from tracespec.integrations.paddle_hapi import TracespecCallback


class Data(paddle.io.Dataset):  # type: ignore[misc]
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((32, 10)).astype(np.float32)
        self.y = rng.integers(0, 4, (32, 1)).astype(np.int64)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.x[i], self.y[i]

    def __len__(self) -> int:
        return len(self.x)


def fit(out: Path, learning_rate: float) -> None:
    paddle.seed(0)
    network = paddle.nn.Sequential(paddle.nn.Linear(10, 32), paddle.nn.GELU(), paddle.nn.Linear(32, 4))
    model = paddle.Model(network)
    model.prepare(
        paddle.optimizer.AdamW(learning_rate=learning_rate, parameters=network.parameters()), paddle.nn.CrossEntropyLoss()
    )
    # record every batch at statistics level; steps=, every=, capture=, include= choose what
    model.fit(Data(), epochs=1, batch_size=8, shuffle=False, verbose=0, callbacks=[TracespecCallback(out, overwrite=True)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/paddle_model"))
    folder = parser.parse_args().out
    fit(folder / "reference", learning_rate=1e-3)
    fit(folder / "stale_config", learning_rate=3e-3)
    diff = [
        sys.executable,
        "-m",
        "tracespec.cli",
        "diff",
        str(folder / "reference"),
        str(folder / "stale_config"),
        "--no-progress",
    ]
    return 0 if subprocess.run(diff).returncode == 1 else 1  # the change must be found


if __name__ == "__main__":
    raise SystemExit(main())
