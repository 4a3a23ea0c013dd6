"""The training loops that ``test_crash_recording.py`` records, killed, signalled or failed.

They run in processes forked from a ``multiprocessing`` fork server that imported the frameworks
once (``preload``): importing torch or paddle takes seconds, a fork milliseconds, so twenty kills
cost twenty forks, not twenty imports. Every run of a loop with the same arguments computes the
same values (fixed seeds, tiny matrices that no thread pool splits), so an uninterrupted run is
the reference an interrupted one is compared with.
"""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

import tracespec

# torch._dynamo: every torch optimizer imports it on creation (two seconds).
PRELOAD = ["numpy", "torch", "torch._dynamo", "paddle", "tracespec.adapters.torch", "tracespec.adapters.paddle", __name__]


class Interrupted(RuntimeError):
    """The exception a loop raises mid-step (``interrupt="raise"``)."""


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(step)
    return rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((4, 4)).astype(np.float32)


def torch_loop() -> tuple[Any, Any, Any]:
    """A small MLP, Adam, and ``step(i)`` running forward and returning the backward to run."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def forward(i: int) -> Any:
        x, y = (torch.from_numpy(a) for a in batch(i))
        loss = nn.functional.mse_loss(model(x), y)

        def backward() -> None:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        return backward

    return model, optimizer, forward


def paddle_loop() -> tuple[Any, Any, Any]:
    """The same MLP and Adam in Paddle."""
    import paddle
    from paddle import nn

    paddle.set_device("cpu")
    paddle.seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = paddle.optimizer.Adam(learning_rate=1e-2, parameters=model.parameters())

    def forward(i: int) -> Any:
        x, y = (paddle.to_tensor(a) for a in batch(i))
        loss = nn.functional.mse_loss(model(x), y)

        def backward() -> None:
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()

        return backward

    return model, optimizer, forward


LOOPS = {"torch": torch_loop, "paddle": paddle_loop}


def train(
    framework: str,
    folder: str | Path,
    steps: int,
    progress: Connection | None = None,
    interrupt: str | None = None,
    interrupt_step: int = 3,
    **options: Any,
) -> None:
    """Record ``steps`` training steps into ``folder``, sending ``"recording"`` once the trace is
    open and each step's index once its ``rec.step()`` returned.

    ``interrupt``: after the forward of step ``interrupt_step``, send the process ``"SIGTERM"`` or
    ``"SIGINT"``, or ``"raise"`` :class:`Interrupted`.
    """
    model, optimizer, forward = LOOPS[framework]()
    with tracespec.record(model, folder, capture="full", optimizer=optimizer, **options) as rec:
        if progress is not None:
            progress.send("recording")
        for i in range(steps):
            backward = forward(i)
            if i == interrupt_step and interrupt in ("SIGTERM", "SIGINT"):
                os.kill(os.getpid(), getattr(signal, interrupt))
            if i == interrupt_step and interrupt == "raise":
                raise Interrupted(f"failed mid-step {i}")
            backward()
            rec.step()
            if progress is not None:
                progress.send(i)
