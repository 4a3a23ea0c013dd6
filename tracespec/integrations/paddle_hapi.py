"""Record chosen steps of a ``paddle.Model.fit`` run (Paddle's high-level API).

    from tracespec.integrations.paddle_hapi import TracespecCallback

    model = paddle.Model(network)
    model.prepare(optimizer, loss)
    model.fit(data, epochs=1, callbacks=[TracespecCallback("runs/paddle", steps=range(3))])

One trace step per training batch (counting from 0 over the whole ``fit``), recorded with
:func:`tracespec.record` on the network and the optimizer ``prepare`` was given.
"""

from __future__ import annotations

import os
from typing import Any

from paddle.callbacks import Callback

import tracespec

__all__ = ["TracespecCallback"]


class TracespecCallback(Callback):
    """Record a ``paddle.Model.fit`` run into the trace folder ``path`` (``record_options``: those
    of :func:`tracespec.record`, such as ``steps``, ``every``, ``capture``, ``include``, ``ops``)."""

    def __init__(self, path: str | os.PathLike[str], **record_options: Any) -> None:
        super().__init__()
        if "optimizer" in record_options:
            raise tracespec.errors.UsageError(
                "TracespecCallback records the optimizer of paddle.Model.prepare; do not pass optimizer="
            )
        self.path = path
        self.record_options = record_options
        self.recorder: Any = None

    def on_train_begin(self, logs: Any = None) -> None:
        model = self.model
        if model is None:
            raise tracespec.errors.UsageError("TracespecCallback is given to paddle.Model.fit, which sets its model")
        self.recorder = tracespec.record(model.network, self.path, optimizer=model._optimizer, **self.record_options)
        self.recorder.__enter__()

    def on_train_batch_end(self, step: int, logs: Any = None) -> None:
        if self.recorder is not None:
            self.recorder.step()

    def on_train_end(self, logs: Any = None) -> None:
        if self.recorder is not None:
            self.recorder.__exit__(None, None, None)
            self.recorder = None
