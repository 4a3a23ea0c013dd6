"""Record chosen steps of a Hugging Face ``transformers.Trainer`` run.

    from tracespec.integrations.transformers import TracespecCallback

    trainer = Trainer(model, args, train_dataset=data, callbacks=[TracespecCallback("runs/hf", steps=range(3))])
    trainer.train()

One trace step per optimizer step (``state.global_step``), recorded with :func:`tracespec.record`:
module inputs, outputs and gradients during the step, parameter gradients just before the
optimizer steps, the updated weights and optimizer state after. Every process of a distributed
run writes its own rank's part of the same trace.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

import tracespec

__all__ = ["TracespecCallback"]


class TracespecCallback(TrainerCallback):
    """Record a Trainer run into the trace folder ``path``.

    ``record_options`` are those of :func:`tracespec.record`: ``steps`` (which optimizer steps to
    record, counting from 0) or ``every``, ``capture``, ``levels``, ``include``, ``exclude``,
    ``ops``... The optimizer is the Trainer's own (unwrapped from Accelerate's wrapper).
    """

    def __init__(self, path: str | os.PathLike[str], **record_options: Any) -> None:
        if "optimizer" in record_options:
            raise tracespec.errors.UsageError("TracespecCallback records the Trainer's own optimizer; do not pass optimizer=")
        self.path = path
        self.record_options = record_options
        self.recorder: Any = None

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        self.recorder = tracespec.record(model, self.path, optimizer=optimizer, **self.record_options)
        self.recorder.__enter__()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder is not None:
            self.recorder.step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder is not None:
            self.recorder.__exit__(None, None, None)
            self.recorder = None
