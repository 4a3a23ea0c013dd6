"""The framework-agnostic half of recording: the recorder (selection, the tree, counters, dedup,
steps, crash handling). Its parts live beside it: the options in ``_options``, slot names in
``_slots``, host statistics and copy buffers in ``_host``.

A framework adapter subclasses :class:`Recorder` (``adapters/torch.py`` and ``adapters/paddle.py``
through the ``HookedRecorder`` of ``adapters/_hooked.py``) and provides only what needs the framework: module enumeration, hook installation and removal,
and turning a tensor into a :class:`Summary` (host copy, statistics, hash). Everything that
decides *what* is recorded and *how it is named* lives here, so two frameworks name the same
thing the same way.

Constraints:
- Nothing here imports a framework. Tensors are opaque objects recognised by the adapter's
  :meth:`Recorder.is_tensor`.
- Hooks call :meth:`Recorder.forward_begin` / :meth:`Recorder.forward_end` and the backward
  helpers; they must never change a value the model computes (no observer effect).
- Summaries may be deferred (a device copy in flight): they are written in submission order,
  so ``same_as`` always names an earlier record id.
- What a crash can lose (spec section 11): by default :meth:`Recorder.step` returns once the
  step is published and durable; ``publish="async"`` lets the step's publication overlap the next
  step, so a crash loses at most the step in progress and the one before it. An exception
  leaving the ``with`` block, or SIGTERM/SIGINT, publishes the step in progress as far as it got,
  says so in ``part.json`` (``ending``, ``partial_steps``), then goes on unchanged.
- Signal handlers run in the main thread between two bytecodes, possibly inside the recorder
  while it holds the writer's lock: then the handling waits for the next hook (see
  :meth:`Recorder._on_signal`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import sys
import threading
import warnings
import weakref
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, Final

import numpy as np

import tracespec.storage
from tracespec.adapters._options import ROLE_GROUPS, RecordOptions, Selector
from tracespec.adapters._slots import flatten, input_leaves
from tracespec.errors import NonFiniteError, UsageError
from tracespec.format.manifest import Ending
from tracespec.format.stats import TensorStats
from tracespec.format.tables import ROLES
from tracespec.storage import TraceWriter, is_url

__all__ = [
    "BackwardCall",
    "CaptureBudgetWarning",
    "OpDescription",
    "Recorder",
    "Summary",
    "calling_frame",
    "op_name",
]


_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
# Code in these folders may hold the writer's lock or half-updated recorder state.
_INTERNAL_FOLDERS: Final = tuple(
    os.path.dirname(path) + os.sep for path in (__file__, os.path.dirname(str(tracespec.storage.__file__)))
)
_FORWARD_ROLES: Final = frozenset({"input", "output"})
_BACKWARD_ROLES: Final = frozenset({"grad_output", "grad_input"})
_CALL_ROLES: Final = _FORWARD_ROLES | _BACKWARD_ROLES  # what an op node records: it owns no parameter


OpDescription = tuple[str, bool, str]
"""How an op is recorded: its name (``mul``), whether it changes its first argument in place, and
the function's qualified name (``torch.Tensor.__mul__``)."""

_ADAPTERS_DIR: Final = os.path.dirname(os.path.abspath(__file__)) + os.sep


def calling_frame(framework_dir: str, dispatch_files: frozenset[str] = frozenset()) -> FrameType | None:
    """The frame of the code that called the current op, or None when that is the framework's own
    code (``nn.Linear.forward`` calling ``F.linear``: the module is the record) or the recorder's.

    The recorder's frames (its interception point) and the framework's ``dispatch_files`` (where a
    function hands itself to the interception point) are passed over: they are not the caller.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_ADAPTERS_DIR) or frame.f_code.co_filename in dispatch_files
    ):
        frame = frame.f_back
    if frame is None or frame.f_code.co_filename.startswith(framework_dir):
        return None
    return frame


_ARITHMETIC: Final = frozenset(
    {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift"}
)
_DUNDER_OPS: Final = {
    "truediv": "div",
    "floordiv": "floor_divide",
    "mod": "remainder",
    "and": "bitwise_and",
    "or": "bitwise_or",
    "xor": "bitwise_xor",
    "lshift": "bitwise_left_shift",
    "rshift": "bitwise_right_shift",
    "invert": "bitwise_not",
}
"""Operator methods (``__truediv__``) recorded under the name of the function they compute (``div``)."""


def op_name(name: str) -> tuple[str, bool]:
    """The name an op called ``name`` (a function or tensor method) is recorded under, and whether
    it modifies its first argument in place.

    Operators are named after the function they compute: ``a * b`` and ``b * a`` (``__rmul__``)
    are both ``mul``, ``a += b`` is ``add_`` (the frameworks' name for the in-place form),
    ``x[i] = v`` is ``setitem`` (in place).
    """
    if name.startswith("__") and name.endswith("__"):
        core = name[2:-2]
        if core == "setitem":
            return "setitem", True
        if core[:1] in ("i", "r") and core[1:] in _ARITHMETIC:
            base = _DUNDER_OPS.get(core[1:], core[1:])
            return (f"{base}_", True) if core[0] == "i" else (base, False)
        return _DUNDER_OPS.get(core, core), False
    return name, name.endswith("_")


class CaptureBudgetWarning(UserWarning):
    """The byte budget (``max_bytes``) is spent: later tensors keep statistics, not data."""


# ------------------------------------------------------------------------------------ summaries
@dataclass(slots=True)
class Summary:
    """What the adapter hands back for one tensor at one capture level.

    ``array`` (a host copy the writer may keep) is required at level ``full``; ``stats`` and
    ``hash`` should be filled by the adapter's fast path for the levels that need them, otherwise
    the writer computes them from ``array`` (slowly, with numpy). ``finish``, when set, must be
    called before the other fields are read: it completes a deferred (device) computation.
    """

    dtype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    stats: TensorStats | None = None
    hash: str | None = None
    finish: Callable[[Summary], None] | None = None


@dataclass(slots=True)
class _Record:
    """One tensor record waiting to be handed to the writer."""

    kwargs: dict[str, Any]
    summary: Summary | None  # None for a non-tensor leaf
    same_as: _Record | None = None
    id: int | None = None
    value: Any = None


@dataclass(slots=True)
class _Node:
    id: int
    route: str
    module: Any
    selected: bool
    levels: dict[str, str | None]  # role -> capture level, None = not captured
    local_names: dict[int, str] = field(default_factory=dict)
    records_ops: bool = False  # functional ops called in its forward are recorded (option ``ops``)


@dataclass(slots=True)
class _ForwardCall:
    node: _Node
    call: int
    begin: int
    extra: Any = None  # the adapter's per-call state (e.g. the input views it installed)
    op_counts: dict[str, int] = field(default_factory=dict)  # op name -> calls so far in this call
    inputs_nonfinite: bool = False  # checked only with stop_on_nonfinite


@dataclass(slots=True)
class BackwardCall:
    """The backward counterpart of one forward call; adapters create it at forward end.

    ``begin`` is the event at which the first gradient with respect to one of the call's outputs
    arrived; ``end`` the event at which the last expected gradient with respect to its inputs was
    computed (``expected_inputs`` of them). A call with no differentiable input ends right after
    it begins.
    """

    node: _Node
    call: int
    expected_inputs: int
    step: int
    begin: int | None = None
    received_inputs: int = 0
    ended: bool = False
    grad_output_nonfinite: bool = False  # checked only with stop_on_nonfinite


# ------------------------------------------------------------------------------------- recorder
class Recorder(ABC):
    """Records one model into one trace; subclassed once per framework.

    Use it as a context manager (``with tracespec.record(model, path) as rec``) and call
    :meth:`step` after each training step. A subclass implements the abstract methods below;
    its hooks call :meth:`forward_begin`, :meth:`forward_end`, :meth:`backward_output_grad`
    and :meth:`backward_input_grad`.
    """

    framework: ClassVar[str] = ""
    max_pending_records: ClassVar[int] = 256

    def __init__(self, model: Any, path: str | os.PathLike[str], options: RecordOptions) -> None:
        self.model = model
        self.path = path if is_url(path) else Path(path)
        self.options = options
        self.step_index = 0
        self.writer: TraceWriter | None = None
        self._nodes: list[_Node] = []
        self._node_of: dict[int, _Node] = {}
        self._param_owner: dict[int, tuple[_Node, str]] = {}
        self._by_route: dict[str, _Node] = {}
        self._child_count: dict[int, int] = {}
        self._op_nodes: dict[tuple[int, str, int], _Node] = {}
        self._data_bytes = 0
        self._budget_warned = False
        self._stopped = False
        self._previous_step_published: threading.Event | None = None  # publish="async"
        self._previous_handlers: dict[int, Any] = {}
        self._deferred_signal: int | None = None
        self._signal_ending: tuple[BaseException, Ending] | None = None
        self._reset_step_state()

    # ---------------------------------------------------------------- framework-specific
    @abstractmethod
    def framework_version(self) -> str | None:
        """The framework's version string."""

    @abstractmethod
    def device_name(self) -> str:
        """Where the model runs (``"cpu"``, ``"cuda:0"``), for the part manifest."""

    @abstractmethod
    def distributed(self) -> tuple[int, int] | None:
        """``(rank, world_size)`` when the framework's distributed runtime is initialised."""

    @abstractmethod
    def named_modules(self) -> Iterable[tuple[str, Any]]:
        """Every module once, in pre-order, the root first with route ``""``."""

    @abstractmethod
    def local_tensors(self, module: Any, role: str) -> Iterable[tuple[str, Any]]:
        """The module's own (not its children's) parameters (``role="parameter"``) or buffers."""

    @abstractmethod
    def is_tensor(self, value: Any) -> bool:
        """Whether ``value`` is one of the framework's tensors."""

    @abstractmethod
    def tensor_version(self, tensor: Any) -> int:
        """A counter that changes when the tensor is modified in place (for dedup)."""

    def dedup_key(self, tensor: Any) -> Hashable:
        """A key such that two tensors with equal keys hold the same values, as long as the
        first is alive and neither was modified in place since (checked with
        :meth:`tensor_version`). The default is the object's identity; an adapter may use the
        data pointer, shape, strides and dtype to also catch views of the same memory."""
        return id(tensor)

    @abstractmethod
    def summarize(self, tensor: Any, level: str) -> Summary:
        """Describe ``tensor`` at ``level``: host copy for ``full``, statistics, hash."""

    @abstractmethod
    def install_hooks(self) -> None:
        """Install the framework hooks on every module of ``named_modules()``."""

    @abstractmethod
    def remove_hooks(self) -> None:
        """Remove every hook :meth:`install_hooks` installed."""

    @abstractmethod
    def parameter_grad(self, parameter: Any) -> Any:
        """The gradient accumulated on ``parameter`` (None when it has none)."""

    @abstractmethod
    def optimizer_state(self, optimizer: Any) -> Iterable[tuple[Any, str, Any]]:
        """``(parameter, state key, value)`` for every entry of the optimizer's state."""

    def settle(self) -> None:
        """Record what the hooks collected inside compiled code and left for later, before
        anything else is recorded or published (nothing, for an adapter that never defers)."""

    def install_optimizer_hooks(self, optimizer: Any) -> None:
        """Make ``optimizer.step()`` call :meth:`before_optimizer_step` and
        :meth:`after_optimizer_step`, where the framework allows it. Without such hooks the
        gradients and the update are recorded at :meth:`step`."""

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.stop()
        elif self._signal_ending is not None and self._signal_ending[0] is exc:
            self.stop(self._signal_ending[1])  # a signal's handler raised it (SIGINT: KeyboardInterrupt)
        else:
            self.stop(Ending.of_exception(exc, self.step_index))

    def start(self) -> None:
        """Open the writer, build the module tree and install the hooks."""
        if self.writer is not None:
            raise UsageError("this recorder is already started; use a new tracespec.record(...)")
        rank, world_size = self._rank_and_world_size()
        self.writer = TraceWriter(
            self.path,
            framework=self.framework,
            framework_version=self.framework_version(),
            rank=rank,
            world_size=world_size,
            device=self.device_name(),
            capture=self.options.to_json(),
            metadata=self.options.metadata,
            compression=self.options.compression,
            durable=self.options.durable,
            overwrite=self.options.overwrite,
            storage_options=self.options.storage_options,
            # The model computes while the trace is written: keep the kernel's page-cache work
            # off the cores it trains on.
            direct_io=True,
        )
        self.rank, self.world_size = rank, world_size
        self._build_tree()
        self.install_hooks()
        if self.options.optimizer is not None:
            self.install_optimizer_hooks(self.options.optimizer)
        self._install_signal_handlers()

    def stop(self, ending: Ending | None = None) -> None:
        """Remove the hooks, finish the current step and close the writer.

        With an ``ending`` (an exception left the ``with`` block, or a signal came) the step in
        progress is published as far as it got and the part is left incomplete, with the ending
        in ``part.json``. Then nothing here raises: the run's own exception must go on unchanged,
        so a failure to write is a warning.
        """
        if self.writer is None or self._stopped:
            return
        self._stopped = True
        writer = self.writer
        try:
            self.remove_hooks()
            if ending is None:
                if self._step_dirty:
                    self._finish_step()
            else:
                self._flush_quietly(f"the recording ended by {ending.how} ({ending.detail})")
        finally:
            if ending is None:
                writer.close()
            else:
                try:
                    writer.abort(ending)
                except Exception as exc:
                    warnings.warn(f"tracespec.record: could not write how the recording ended: {exc}", stacklevel=3)
            # Only now: a signal while the trace closes is deferred (it is inside tracespec) and
            # goes on below, after the part says how it ended, instead of killing it half-closed.
            self._restore_signal_handlers()
        self._handle_deferred_signal()

    def step(self, optimizer: Any = None) -> None:
        """End the current step and start the next one.

        Parameter gradients, and with an optimizer the weights and optimizer state after its
        ``step()``, are recorded when the optimizer steps if the recorder hooks it (the
        ``optimizer`` option, on frameworks with optimizer hooks); otherwise here, so then call
        ``rec.step()`` after ``optimizer.step()`` and before the gradients are cleared.

        With ``publish="step"`` (the default) it returns once the step's records and data are
        published (and durable, with ``durable=True``): a crash after it loses nothing of it.
        With ``publish="async"`` it returns once the *previous* step is published.
        """
        if self.writer is None or self._stopped:
            raise UsageError("step() outside the recording; use `with tracespec.record(...) as rec:`")
        published = self._finish_step(optimizer)
        self.step_index += 1
        self._reset_step_state()
        # A step not recorded (every=, steps=) has nothing to make durable: no fsync to wait for.
        if published is not None and self.options.publish == "step":
            self.writer.wait(published)
        elif published is not None:
            if self._previous_step_published is not None:
                self.writer.wait(self._previous_step_published)
            self._previous_step_published = published
        self._handle_deferred_signal()

    def flush(self) -> None:
        """Publish everything recorded so far, the step in progress included, and return once
        it is durable: a point a crash cannot take back. ``part.json`` lists the step in
        progress in ``partial_steps`` until its :meth:`step` publishes it whole."""
        if self.writer is None or self._stopped:
            raise UsageError("flush() outside the recording; use `with tracespec.record(...) as rec:`")
        self.settle()
        self._drain()
        self.writer.flush()
        self._handle_deferred_signal()

    def _flush_quietly(self, why: str) -> None:
        """:meth:`flush` where a writer error must not replace what is already going on."""
        assert self.writer is not None
        try:
            self.settle()
            self._drain()
            self.writer.flush()
        except Exception as exc:
            warnings.warn(f"tracespec.record: {why}; publishing the step in progress failed: {exc}", stacklevel=4)

    # ---------------------------------------------------------------- signals
    def _install_signal_handlers(self) -> None:
        """Handle SIGTERM and SIGINT: publish the step in progress, then chain to the handler
        that was there. Only the main thread may set handlers; a signal that is ignored (or
        handled outside Python, which cannot be chained) is left alone."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _SIGNALS:
            previous = signal.getsignal(signum)
            if previous is None or previous == signal.SIG_IGN:
                continue
            self._previous_handlers[signum] = previous
            signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous_handlers.items():
            if signal.getsignal(signum) == self._on_signal:  # not replaced since by someone else
                signal.signal(signum, previous)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Publish the step in progress as far as it got, then let the signal go on.

        A Python handler that was there before is called (Python's SIGINT handler raises
        KeyboardInterrupt, which ends the recording in ``__exit__`` as this signal's doing). With
        the default action, the part is ended (``ending``: the signal) and the process is
        killed by the same signal, as it would have been without the recording.

        Interrupted inside tracespec's own code (perhaps holding the writer's lock, which
        publishing needs), it only notes the signal: the next hook, ``step()``, ``flush()`` or
        ``stop()`` handles it, at a point where the recorder's state is whole.
        """
        caller = frame
        while caller is not None:
            if caller.f_code.co_filename.startswith(_INTERNAL_FOLDERS):
                self._deferred_signal = signum
                return
            caller = caller.f_back
        self._deferred_signal = None
        name = signal.Signals(signum).name
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        if not self._stopped:
            self._flush_quietly(f"{name} received")
        if callable(previous):
            try:
                previous(signum, frame)
            except BaseException as exc:
                self._signal_ending = (exc, Ending("signal", name, self.step_index))
                raise
            return
        self.stop(Ending("signal", name, self.step_index))
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _handle_deferred_signal(self) -> None:
        # Only the main thread: signal handlers run there (a backward hook may run on another).
        if self._deferred_signal is not None and threading.current_thread() is threading.main_thread():
            if self._stopped:  # the recording ended: the signal's own handling, as if it came now
                signum, self._deferred_signal = self._deferred_signal, None
                signal.raise_signal(signum)
            else:
                self._on_signal(self._deferred_signal, None)

    @property
    def active(self) -> bool:
        """Whether the current step is recorded (one of ``steps``, or every ``every``-th step)."""
        if self.options.steps is not None:
            return self.step_index in self.options.steps
        return self.step_index % self.options.every == 0

    @property
    def bytes_captured(self) -> int:
        """Tensor data bytes handed to the writer so far (what ``max_bytes`` limits)."""
        return self._data_bytes

    # ---------------------------------------------------------------- tree
    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.options.rank is not None and self.options.world_size is not None:
            if self.options.rank >= self.options.world_size:
                raise UsageError(f"rank {self.options.rank} is outside world_size {self.options.world_size}")
            return self.options.rank, self.options.world_size
        return self.distributed() or (0, 1)

    def _build_tree(self) -> None:
        by_route = self._by_route
        for route, module in self.named_modules():
            if id(module) in self._node_of:
                continue  # registered under a second name: one identity, its first route
            parent = by_route.get(route.rpartition(".")[0]) if route else None
            cls = type(module)
            chain = [*self._ancestors(route, by_route), module]
            node = self._add_node(
                route, cls.__name__, parent, module, chain, "module", {"qualified_class": f"{cls.__module__}.{cls.__qualname__}"}
            )
            ops = self.options.ops
            node.records_ops = (
                node.selected and ops is not None and any(self._matches(s, self._routes_of_chain(route), chain) for s in ops)
            )
            self._nodes.append(node)
            self._node_of[id(module)] = node
            by_route[route] = node
            for name, param in self.local_tensors(module, "parameter"):
                self._param_owner.setdefault(id(param), (node, name))

    def _add_node(
        self, route: str, class_name: str, parent: _Node | None, module: Any, chain: list[Any], kind: str, attrs: dict[str, Any]
    ) -> _Node:
        """Write a node row (its position: the next among its parent's children) and make its node."""
        assert self.writer is not None
        position = self._child_count.get(parent.id, 0) if parent else 0
        if parent:
            self._child_count[parent.id] = position + 1
        node_id = self.writer.add_node(
            route, class_name, parent=parent.id if parent else None, kind=kind, position=position, attrs=attrs
        )
        node = _Node(node_id, route, module, self._is_selected(route, chain), {})
        roles = ROLES if kind == "module" else _CALL_ROLES
        node.levels = {role: self._level_for(route, chain, role) if node.selected and role in roles else None for role in ROLES}
        return node

    @staticmethod
    def _ancestors(route: str, by_route: dict[str, _Node]) -> list[Any]:
        found = []
        parts = route.split(".") if route else []
        for i in range(len(parts)):
            prefix = ".".join(parts[:i])
            if prefix in by_route:
                found.append(by_route[prefix].module)
        return found

    def _routes_of_chain(self, route: str) -> list[str]:
        parts = route.split(".") if route else []
        return [".".join(parts[:i]) for i in range(len(parts) + 1)]

    def _matches(self, selector: Selector, routes: list[str], chain: list[Any]) -> bool:
        if isinstance(selector, type):
            return any(isinstance(m, selector) for m in chain)
        if any(fnmatch.fnmatchcase(r, selector) for r in routes):
            return True
        return any(selector in (c.__name__, f"{c.__module__}.{c.__qualname__}") for m in chain for c in type(m).__mro__)

    def _is_selected(self, route: str, chain: list[Any]) -> bool:
        routes = self._routes_of_chain(route)
        if self.options.include is not None and not any(self._matches(s, routes, chain) for s in self.options.include):
            return False
        return not any(self._matches(s, routes, chain) for s in self.options.exclude)

    def _level_for(self, route: str, chain: list[Any], role: str) -> str | None:
        if role not in self.options.roles:
            return None
        routes = self._routes_of_chain(route)
        for key, level in self.options.levels:
            if isinstance(key, str) and (key == role or role in ROLE_GROUPS.get(key, ())):
                return level
            if (isinstance(key, type) or (key not in ROLES and key not in ROLE_GROUPS)) and self._matches(key, routes, chain):
                return level
        return self.options.capture

    def node_of(self, module: Any) -> _Node | None:
        """The node of a module of the tree (None for a module outside it)."""
        return self._node_of.get(id(module))

    # ---------------------------------------------------------------- per-step state
    def _reset_step_state(self) -> None:
        self._events: dict[str, int] = {"forward": 0, "backward": 0, "update": 0}
        self._call_counts: dict[int, int] = {}
        self._open_calls: dict[int, list[_ForwardCall]] = {}
        self._module_calls: list[_ForwardCall] = []  # in progress, outermost first
        self._backward_calls: list[BackwardCall] = []
        self._seen: dict[tuple[str, Hashable], tuple[Any, int, str, _Record]] = {}
        self._pending: deque[_Record] = deque()
        self._params_recorded = False
        self._grads_recorded = False
        self._update_recorded = False
        self._step_dirty = False

    def _next_event(self, stage: str) -> int:
        event = self._events[stage]
        self._events[stage] = event + 1
        return event

    # ---------------------------------------------------------------- forward (called by hooks)
    def forward_begin(self, module: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _ForwardCall | None:
        """A module's forward starts: count the call, record its inputs (and, at the first call
        of the step, every parameter and buffer). Returns the call, or None when not recording."""
        node = self._node_of.get(id(module))
        return None if node is None else self.call_begins(node, input_leaves(args, kwargs, self.is_tensor))

    def call_begins(self, node: _Node, inputs: Iterable[tuple[str, Any]]) -> _ForwardCall | None:
        """:meth:`forward_begin` with the inputs already flattened into ``(slot, leaf)`` pairs; a
        leaf may be a :class:`Summary` the adapter computed elsewhere (inside compiled code)."""
        self._handle_deferred_signal()
        if not self.active:
            return None
        forward_call = self._begin_call(node, inputs)
        self._open_calls.setdefault(node.id, []).append(forward_call)
        self._module_calls.append(forward_call)
        return forward_call

    def forward_end(self, module: Any, output: Any) -> _ForwardCall | None:
        """A module's forward returned ``output``: record the outputs and the call row."""
        node = self._node_of.get(id(module))
        return None if node is None else self.call_ends(node, flatten(output, "", self.is_tensor))

    def call_ends(self, node: _Node, outputs: Iterable[tuple[str, Any]]) -> _ForwardCall | None:
        """:meth:`forward_end` with the outputs already flattened (see :meth:`call_begins`)."""
        self._handle_deferred_signal()
        if not self.active:
            return None
        stack = self._open_calls.get(node.id)
        if not stack:
            return None
        forward_call = stack.pop()
        # An exception inside a forward leaves the calls it interrupted open: they end here too.
        while self._module_calls and self._module_calls.pop() is not forward_call:
            pass
        self._end_call(forward_call, outputs)
        return forward_call

    def op_caller(self) -> _ForwardCall | None:
        """The innermost module call in progress, where its functional ops are recorded."""
        if not self._module_calls or not self.active:
            return None
        forward_call = self._module_calls[-1]
        return forward_call if forward_call.node.records_ops else None

    def op_begin(
        self,
        caller: _ForwardCall,
        name: str,
        op: str,
        source: tuple[str, int, str],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> _ForwardCall:
        """An op (a framework function or tensor method ``op``, recorded as ``name``) called by
        ``caller``'s forward code at ``source`` (file, line, function) starts: record its inputs.
        Its node is ``<caller route>.<name>#<k>`` for the k-th ``name`` of that module call,
        made at its first call. Call :meth:`op_end` with its output."""
        k = caller.op_counts.get(name, 0)
        caller.op_counts[name] = k + 1
        key = (caller.node.id, name, k)
        node = self._op_nodes.get(key)
        if node is None:
            route = f"{caller.node.route}.{name}#{k}" if caller.node.route else f"{name}#{k}"
            chain = self._ancestors(route, self._by_route)
            attrs = {"op": op, "source": {"file": source[0], "line": source[1], "function": source[2]}}
            node = self._op_nodes[key] = self._add_node(route, name, caller.node, None, chain, "op", attrs)
        return self._begin_call(node, input_leaves(args, kwargs, self.is_tensor))

    def op_end(self, forward_call: _ForwardCall, output: Any) -> None:
        """The op of :meth:`op_begin` returned ``output``: record it and the call row."""
        self._end_call(forward_call, flatten(output, "", self.is_tensor))

    def _begin_call(self, node: _Node, inputs: Iterable[tuple[str, Any]]) -> _ForwardCall:
        self._step_dirty = True
        if not self._params_recorded:
            self._params_recorded = True
            self._record_module_tensors("forward", ("parameter", "buffer"))
        call = self._call_counts.get(node.id, 0)
        self._call_counts[node.id] = call + 1
        forward_call = _ForwardCall(node, call, self._next_event("forward"))
        level = node.levels["input"]
        if level is not None:
            forward_call.inputs_nonfinite = self._record_leaves("forward", node, call, "input", inputs, level)
        return forward_call

    def _end_call(self, forward_call: _ForwardCall, outputs: Iterable[tuple[str, Any]]) -> None:
        end = self._next_event("forward")
        level = forward_call.node.levels["output"]
        nonfinite = False
        if level is not None:
            nonfinite = self._record_leaves("forward", forward_call.node, forward_call.call, "output", outputs, level)
        assert self.writer is not None
        self.writer.add_call(
            step=self.step_index,
            stage="forward",
            node=forward_call.node.id,
            call=forward_call.call,
            begin=forward_call.begin,
            end=end,
        )
        if nonfinite and not forward_call.inputs_nonfinite:
            self._stop_at_nonfinite("forward", forward_call.node, forward_call.call, "output")

    def wants_backward(self, node: _Node) -> bool:
        """Whether gradients of this node's calls are recorded (adapters skip their hooks if not)."""
        return node.levels["grad_output"] is not None or node.levels["grad_input"] is not None

    # ---------------------------------------------------------------- backward (called by hooks)
    def backward_call(self, forward_call: _ForwardCall, expected_inputs: int) -> BackwardCall:
        """Create the backward counterpart of a forward call (at its forward end)."""
        backward_call = BackwardCall(forward_call.node, forward_call.call, expected_inputs, self.step_index)
        self._backward_calls.append(backward_call)
        return backward_call

    def backward_output_grad(self, backward_call: BackwardCall, slot: str, grad: Any) -> None:
        """The gradient with respect to output ``slot`` of the call arrived."""
        self._handle_deferred_signal()
        if backward_call.step != self.step_index:
            return  # backward of a forward from an earlier step: not this step's record
        self._step_dirty = True
        if backward_call.begin is None:
            backward_call.begin = self._next_event("backward")
        level = backward_call.node.levels["grad_output"]
        if level is not None:
            backward_call.grad_output_nonfinite |= self._record_leaves(
                "backward", backward_call.node, backward_call.call, "grad_output", [(slot, grad)], level
            )
        if backward_call.expected_inputs == 0 and not backward_call.ended:
            self._end_backward(backward_call)

    def backward_input_grad(self, backward_call: BackwardCall, slot: str, grad: Any) -> None:
        """The gradient with respect to input ``slot`` of the call was computed."""
        self._handle_deferred_signal()
        if backward_call.step != self.step_index or backward_call.ended:
            return
        self._step_dirty = True
        if backward_call.begin is None:
            backward_call.begin = self._next_event("backward")
        level = backward_call.node.levels["grad_input"]
        nonfinite = False
        if level is not None:
            nonfinite = self._record_leaves(
                "backward", backward_call.node, backward_call.call, "grad_input", [(slot, grad)], level
            )
        backward_call.received_inputs += 1
        if backward_call.received_inputs >= backward_call.expected_inputs:
            self._end_backward(backward_call)
        if nonfinite and not backward_call.grad_output_nonfinite:
            self._stop_at_nonfinite("backward", backward_call.node, backward_call.call, "grad_input")

    def _end_backward(self, backward_call: BackwardCall) -> None:
        assert self.writer is not None and backward_call.begin is not None
        backward_call.ended = True
        end = self._next_event("backward")
        self.writer.add_call(
            step=self.step_index,
            stage="backward",
            node=backward_call.node.id,
            call=backward_call.call,
            begin=backward_call.begin,
            end=end,
        )

    # ---------------------------------------------------------------- optimizer and step end
    def before_optimizer_step(self) -> None:
        """The optimizer is about to step: the gradients are final, record them."""
        if self.active and self._step_dirty and not self._grads_recorded:
            self._grads_recorded = True
            self._record_parameter_grads()

    def after_optimizer_step(self, optimizer: Any) -> None:
        """The optimizer stepped: record the updated weights and its state."""
        if self.active and not self._update_recorded:
            self._update_recorded = True
            self._step_dirty = True
            self._record_module_tensors("update", ("parameter",))
            self._record_optimizer_state(optimizer)

    def _finish_step(self, optimizer: Any = None) -> threading.Event | None:
        """Record what the step end records, hand everything over and end the step in the
        writer; returns the event set once the step is published (None: a step not recorded)."""
        assert self.writer is not None
        self.settle()
        if self.active:
            for backward_call in self._backward_calls:
                if backward_call.begin is not None and not backward_call.ended:
                    self._end_backward(backward_call)  # an input whose gradient never came: ends at step end
            self.before_optimizer_step()
            optimizer = optimizer if optimizer is not None else self.options.optimizer
            if optimizer is not None:
                self.after_optimizer_step(optimizer)
            self._drain()
            return self.writer.end_step(self.step_index)  # a step not recorded is not a step of the trace
        return None

    def _record_module_tensors(self, stage: str, roles: tuple[str, ...]) -> None:
        for node in self._nodes:
            for role in roles:
                level = node.levels[role]
                if level is not None:
                    self._record_leaves(stage, node, None, role, self.local_tensors(node.module, role), level)

    def _record_parameter_grads(self) -> None:
        for node in self._nodes:
            level = node.levels["parameter_grad"]
            if level is None:
                continue
            grads = [(name, self.parameter_grad(p)) for name, p in self.local_tensors(node.module, "parameter")]
            self._record_leaves("backward", node, None, "parameter_grad", [(n, g) for n, g in grads if g is not None], level)

    def _record_optimizer_state(self, optimizer: Any) -> None:
        for param, key, value in self.optimizer_state(optimizer):
            owner = self._param_owner.get(id(param))
            if owner is None:
                continue
            node, name = owner
            level = node.levels["optimizer_state"]
            if level is not None:
                self._record_leaves("update", node, None, "optimizer_state", [(f"{name}.{key}", value)], level)

    # ---------------------------------------------------------------- non-finite values
    def _stop_at_nonfinite(self, stage: str, node: _Node, call: int | None, role: str) -> None:
        """``stop_on_nonfinite``: publish what was recorded, then raise at the culprit."""
        self.flush()
        raise NonFiniteError(
            f"tracespec.record(stop_on_nonfinite=True): step {self.step_index}, {stage} of "
            f"{node.route or '(root)'!r} ({type(node.module).__name__}, call {call}): its {role} holds NaN or Inf "
            f"and its inputs did not. The trace holds everything up to here: "
            f"tracespec show {self.path} --first-nonfinite"
        )

    @staticmethod
    def _holds_nonfinite(summary: Summary) -> bool:
        if summary.finish is not None:  # a device summary: its statistics are needed now
            finish, summary.finish = summary.finish, None
            finish(summary)
        return summary.stats is not None and bool(summary.stats.nan_count or summary.stats.inf_count)

    # ---------------------------------------------------------------- records
    def _record_leaves(
        self, stage: str, node: _Node, call: int | None, role: str, leaves: Iterable[tuple[str, Any]], level: str
    ) -> bool:
        """Record the leaves; with ``stop_on_nonfinite``, return whether a tensor holds NaN or Inf."""
        assert self.writer is not None
        nonfinite = False
        for slot, leaf in leaves:
            base = {"step": self.step_index, "stage": stage, "node": node.id, "role": role, "slot": slot, "call": call}
            if isinstance(leaf, Summary) or self.is_tensor(leaf):
                if isinstance(leaf, Summary):  # summarised by the adapter already (inside compiled code)
                    summary = leaf
                    self._submit(_Record({**base, "level": level}, summary))
                else:
                    summary = self._record_tensor(base, leaf, level)
                if self.options.stop_on_nonfinite and not nonfinite:
                    nonfinite = self._holds_nonfinite(summary)
            else:
                self._pending.append(_Record(base, None, value=leaf))
        return nonfinite

    #: Whether gradients may be deduplicated by :meth:`dedup_key`. An autograd engine that
    #: accumulates a gradient into the buffer of its first contribution, in place and without
    #: bumping the version counter (Paddle's does), breaks the "equal key, equal values" rule.
    dedups_gradients: bool = True

    def _record_tensor(self, base: dict[str, Any], tensor: Any, level: str) -> Summary:
        key = (base["stage"], self.dedup_key(tensor))
        seen = None if base["stage"] == "backward" and not self.dedups_gradients else self._seen.get(key)
        version = self.tensor_version(tensor)
        if seen is not None:
            ref, seen_version, seen_level, earlier = seen
            # While the earlier tensor is alive its memory cannot be reused, so an equal key and
            # an unchanged version mean equal values.
            if ref() is not None and seen_version == version and seen_level == level:
                assert earlier.summary is not None
                self._submit(_Record({**base, "level": level}, earlier.summary, same_as=earlier))
                return earlier.summary
        if level == "full" and self.options.max_bytes is not None:
            level = self._within_budget(tensor, level)
        summary = self.summarize(tensor, level)
        if level == "full" and summary.array is not None:
            self._data_bytes += int(summary.array.nbytes)
        record = _Record({**base, "level": level}, summary)
        with contextlib.suppress(TypeError):  # a tensor type without weak references: no dedup for it
            self._seen[key] = (weakref.ref(tensor), version, level, record)
        self._submit(record)
        return summary

    def _within_budget(self, tensor: Any, level: str) -> str:
        assert self.options.max_bytes is not None
        nbytes = self.tensor_nbytes(tensor)
        if self._data_bytes + nbytes <= self.options.max_bytes:
            return level
        if not self._budget_warned:
            self._budget_warned = True
            warnings.warn(
                f"tracespec.record: the byte budget max_bytes={self.options.max_bytes} is spent "
                f"({self._data_bytes} bytes captured, step {self.step_index}); from now on tensors "
                "keep statistics only. Raise max_bytes or narrow the selection to keep more data.",
                CaptureBudgetWarning,
                stacklevel=4,
            )
        return "stats"

    def tensor_nbytes(self, tensor: Any) -> int:
        """Bytes of the tensor's data; adapters override when ``nbytes`` is not an attribute."""
        return int(tensor.nbytes)

    def _submit(self, record: _Record) -> None:
        """Queue a record for the writer, keeping submission order.

        Records without data wait (for the step end or the next record with data): handing each
        to the writer's thread as it comes costs a GIL hand-over per record while the model runs.
        A record with host data ready flushes the queue, so full capture never holds copies; a
        deferred (device) record waits, at most ``max_pending_records`` of them.
        """
        self._pending.append(record)
        summary = record.summary
        if summary is None:  # a non-tensor value: it waits for the next record with data
            return
        if summary.array is not None and summary.finish is None:
            self._drain()
        elif summary.finish is not None:
            while len(self._pending) > self.max_pending_records:
                self._write(self._pending.popleft())

    def _drain(self) -> None:
        """Write every pending record, in order (completes deferred device work)."""
        while self._pending:
            self._write(self._pending.popleft())

    def _write(self, record: _Record) -> None:
        assert self.writer is not None
        summary = record.summary
        if summary is None:
            record.id = self.writer.add_value(value=record.value, **record.kwargs)
            return
        if summary.finish is not None:
            finish, summary.finish = summary.finish, None
            finish(summary)
        if record.same_as is not None:
            assert record.same_as.id is not None
            record.id = self.writer.add_tensor(
                same_as=record.same_as.id, dtype=summary.dtype, shape=summary.shape, **record.kwargs
            )
            return
        record.id = self.writer.add_tensor(
            array=summary.array if record.kwargs["level"] == "full" or (summary.stats is None and summary.hash is None) else None,
            stats=summary.stats,
            hash=summary.hash,
            dtype=summary.dtype,
            shape=summary.shape,
            **record.kwargs,
        )
        summary.array = None  # the writer owns the data now; dedup needs only the record id
