"""Write traces from plain numpy computations, the way a framework adapter would record them.

For tests and benchmarks that need traces without a framework: nodes in pre-order with their
positions, one event counter per (step, stage) for ``begin``/``end``, call numbers per (step,
stage, node), parameters once per step, slots as the spec defines them.

Example::

    with SyntheticRecorder(path) as rec:
        net = rec.module("", "Net")
        fc = rec.module("fc", "Linear", parent=net, params={"weight": w})
        with rec.forward(net, x) as outer:
            with rec.forward(fc, x) as inner:
                y = inner.output(x @ w.T)
            outer.output(y)
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from tracespec.storage import TraceWriter

__all__ = ["SyntheticRecorder"]


class _Call:
    def __init__(self, recorder: SyntheticRecorder, node: int, call: int) -> None:
        self._recorder, self._node, self._call = recorder, node, call
        self.outputs: tuple[np.ndarray, ...] = ()

    def output(self, *arrays: np.ndarray) -> Any:
        """Record the call's outputs (slots ``"0"``, ``"1"``...); returns them (one or a tuple)."""
        self.outputs = arrays
        return arrays[0] if len(arrays) == 1 else arrays


class SyntheticRecorder:
    """Records numpy computations into a trace (see the module docstring).

    Parameters
    ----------
    path:
        The trace folder.
    framework:
        The framework name written to the manifest (``"numpy"``; tests of cross-framework rules
        may say ``"torch"`` or ``"paddle"``).
    level:
        ``full``, ``stats`` or ``hash`` for every tensor.
    writer_options:
        Passed to :class:`~tracespec.TraceWriter` (``rank``, ``world_size``, ``durable``...).
    """

    def __init__(
        self, path: str | os.PathLike[str], framework: str = "numpy", level: str = "full", **writer_options: Any
    ) -> None:
        writer_options.setdefault("durable", False)
        self.writer = TraceWriter(path, framework=framework, **writer_options)
        self.level = level
        self.step = 0
        self._children: dict[int | None, int] = defaultdict(int)
        self._params: dict[int, dict[str, np.ndarray]] = {}
        self._params_recorded: set[int] = set()
        self._events: dict[str, int] = defaultdict(int)
        self._calls: dict[tuple[str, int], int] = defaultdict(int)

    # ------------------------------------------------------------------ tree
    def module(
        self,
        route: str,
        class_name: str,
        parent: int | None = None,
        params: dict[str, np.ndarray] | None = None,
        kind: str = "module",
        attrs: dict[str, Any] | None = None,
    ) -> int:
        """Add a node (in pre-order); ``params`` are its own parameters by local name."""
        position = self._children[parent]
        self._children[parent] += 1
        node = self.writer.add_node(route, class_name, parent=parent, position=position, kind=kind, attrs=attrs)
        self._params[node] = dict(params or {})
        return node

    def _tensor(self, stage: str, node: int, role: str, slot: str, array: np.ndarray, call: int | None) -> None:
        self.writer.add_tensor(
            step=self.step,
            stage=stage,
            node=node,
            call=call,
            role=role,
            slot=slot,
            array=np.array(array, copy=True),
            level=self.level,
        )

    def _event(self, stage: str) -> int:
        value = self._events[stage]
        self._events[stage] += 1
        return value

    # ------------------------------------------------------------------ forward
    @contextmanager
    def forward(self, node: int, *inputs: np.ndarray) -> Iterator[_Call]:
        """One forward call of ``node`` with positional ``inputs``; call ``.output(...)`` inside."""
        call = self._calls[("forward", node)]
        self._calls[("forward", node)] += 1
        begin = self._event("forward")
        if node not in self._params_recorded:
            self._params_recorded.add(node)
            for name, value in self._params[node].items():
                self._tensor("forward", node, "parameter", name, value, None)
        for i, array in enumerate(inputs):
            self._tensor("forward", node, "input", str(i), array, call)
        handle = _Call(self, node, call)
        yield handle
        end = self._event("forward")
        for i, array in enumerate(handle.outputs):
            self._tensor("forward", node, "output", str(i), array, call)
        self.writer.add_call(step=self.step, stage="forward", node=node, call=call, begin=begin, end=end)

    # ------------------------------------------------------------------ backward and update
    def backward(self, node: int, grad_outputs: Sequence[np.ndarray], grad_inputs: Sequence[np.ndarray], call: int = 0) -> None:
        """The backward of forward call ``call`` of ``node``: gradients of its outputs and inputs."""
        begin = self._event("backward")
        end = self._event("backward")
        for i, array in enumerate(grad_outputs):
            self._tensor("backward", node, "grad_output", str(i), array, call)
        for i, array in enumerate(grad_inputs):
            self._tensor("backward", node, "grad_input", str(i), array, call)
        self.writer.add_call(step=self.step, stage="backward", node=node, call=call, begin=begin, end=end)

    def parameter_grads(self, node: int, grads: dict[str, np.ndarray]) -> None:
        for name, array in grads.items():
            self._tensor("backward", node, "parameter_grad", name, array, None)

    def update(self, node: int, params: dict[str, np.ndarray]) -> None:
        """Parameters of ``node`` after an optimizer step (they become the next step's values)."""
        for name, array in params.items():
            self._tensor("update", node, "parameter", name, array, None)
            self._params[node][name] = array

    def end_step(self) -> None:
        self.writer.end_step(self.step)
        self.step += 1
        self._params_recorded.clear()
        self._events.clear()
        self._calls.clear()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> SyntheticRecorder:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None:
            self.close()
        else:
            self.writer.abort()
