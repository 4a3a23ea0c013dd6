"""Record ONNX Runtime runs: every intermediate value of the graph, as a module tree.

Constraints:
- ONNX Runtime only hands back graph outputs, so the recorder runs a copy of the model whose
  outputs are the values to capture. That copy holds every captured intermediate at once when the
  run ends: ``outputs_per_run`` splits the captured values over several runs (each run recomputes
  the graph) to bound memory; ``include``/``exclude`` and ``include_ops``/``exclude_ops`` capture
  less. At ``full``, from the second run with the same input shapes on, ONNX Runtime computes
  the captured values into buffers the recorder reuses (IOBinding), which it keeps: up to about
  two steps' worth.
- At the ``stats`` level, statistics of floating-point values are computed inside the graph by
  ONNX Runtime (sum, sum of squares, min, max; row sums added in float64), so no tensor is copied
  to Python; at ``full``, where every value is fetched anyway, the writer computes them from the
  data in float64 while it writes, after the run. A value
  whose float64 sum of squares is not finite (it holds NaN or Inf) is fetched and summarised by
  the reference :func:`tracespec.format.stats.compute_stats`, which counts NaN and Inf.
- The module tree comes from the scope information ``torch.onnx.export`` leaves in the graph
  (``_onnx_graph``); the statistics nodes the recorder adds are built by ``_onnx_instrument``.
- The model file is untrusted: external data must stay inside the model's folder, and a file that
  is not an ONNX model raises :class:`~tracespec.errors.InputFileError`.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

from tracespec.adapters._host import HostBufferPool
from tracespec.adapters._onnx_graph import GraphOp, GraphTree, check_external_data, load_model, value_info
from tracespec.adapters._onnx_instrument import MOMENTS, PREFIX, STATS_TYPES, dtype_name, moment_nodes, stats_from_moments
from tracespec.errors import InputFileError, UsageError
from tracespec.format.dtypes import dtype_of
from tracespec.format.stats import TensorStats, compute_stats, content_hash
from tracespec.format.tables import LEVELS
from tracespec.storage import TraceWriter

__all__ = ["FRAMEWORK", "OnnxRecorder", "OnnxTrace", "accepts", "record", "record_onnx"]

FRAMEWORK: Final = "onnxruntime"
STAGE: Final = "forward"

# Where ONNX Runtime finds external data files of a model given as bytes.
_EXTERNAL_DATA_FOLDER: Final = "session.model_external_initializers_file_folder_path"
# Ops whose output holds exactly the elements of their first input, in another order or shape.
_SAME_ELEMENTS: Final = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
# numpy kinds of outputs ONNX Runtime can compute into a caller's buffer (not strings, objects).
_BINDABLE_KINDS: Final = "biufc"
# Smaller outputs (statistics, shapes) are left to ONNX Runtime to allocate: a buffer of their
# own would cost a page each, and page faults only matter for large values.
_BIND_MIN_BYTES: Final = 1 << 16
# What a run into bound buffers raises when an output's shape changed (RuntimeError), or for a
# reason the same run unbound reports better.
_BOUND_RUN_ERRORS: Final = (RuntimeError, Fail, InvalidArgument)


# ---------------------------------------------------------------------------------------- selection
@dataclass(frozen=True, slots=True)
class _Selection:
    include: tuple[str, ...] | None
    exclude: tuple[str, ...]
    include_ops: frozenset[str] | None
    exclude_ops: frozenset[str]

    def route(self, route: str) -> bool:
        if self.include is not None and not any(fnmatch.fnmatchcase(route, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(route, p) for p in self.exclude)

    def op(self, op: GraphOp) -> bool:
        op_type = op.node.op_type
        if self.include_ops is not None and op_type not in self.include_ops:
            return False
        return op_type not in self.exclude_ops and self.route(op.route)


def _patterns(value: str | Iterable[str] | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(item, str) for item in items):
        raise UsageError(f"{what} must be a string or a list of strings, got {value!r}")
    return items


def _config_entry(options: ort.SessionOptions, key: str) -> str | None:
    try:
        return str(options.get_session_config_entry(key))
    except RuntimeError:  # ONNX Runtime's way of saying "not set"
        return None


def _default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


# ---------------------------------------------------------------------------------------- recorder
class OnnxRecorder:
    """Runs an ONNX model in ONNX Runtime and records every selected intermediate value.

    Building the recorder analyses the graph and creates the instrumented session once;
    :meth:`record` then runs it on one or more input feeds (one step each) and writes a trace.

    Parameters
    ----------
    model:
        A path to a ``.onnx`` file (external data files are read from its folder) or a loaded
        ``onnx.ModelProto`` with its data inline.
    providers:
        ONNX Runtime execution providers; default: CUDA when available, then CPU.
    capture:
        The level, as for :func:`tracespec.record`: ``"stats"`` (statistics only, the default),
        ``"full"`` (data, statistics and hash) or ``"hash"``.
    include, exclude:
        Route globs (``fnmatch``, e.g. ``"blocks.0.*"``) of the module and op nodes to capture.
    include_ops, exclude_ops:
        ONNX op types (``"MatMul"``) of the op nodes to capture.
    modules, ops, parameters:
        Whether to capture module inputs/outputs, op inputs/outputs and initializers.
    outputs_per_run:
        Capture at most this many values per ONNX Runtime run (the graph is run again for each
        batch); ``None`` captures everything in one run.
    session_options:
        ``onnxruntime.SessionOptions`` for the instrumented session (threads, optimisation level).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | onnx.ModelProto,
        *,
        providers: Sequence[str] | None = None,
        capture: str = "stats",
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        include_ops: str | Iterable[str] | None = None,
        exclude_ops: str | Iterable[str] | None = None,
        modules: bool = True,
        ops: bool = True,
        parameters: bool = True,
        outputs_per_run: int | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        if capture not in LEVELS:
            raise UsageError(f"capture {capture!r} is not one of {LEVELS}")
        level = capture
        if outputs_per_run is not None and outputs_per_run < 1:
            raise UsageError(f"outputs_per_run must be a positive integer or None, got {outputs_per_run!r}")
        self.level = level
        self._proto, self._base_dir = load_model(model)
        check_external_data(self._proto, self._base_dir)
        self._selection = _Selection(
            _patterns(include, "include"),
            _patterns(exclude, "exclude") or (),
            None if include_ops is None else frozenset(_patterns(include_ops, "include_ops") or ()),
            frozenset(_patterns(exclude_ops, "exclude_ops") or ()),
        )
        self._capture = {"modules": modules, "ops": ops, "parameters": parameters}
        self.tree = GraphTree(self._proto.graph)
        self._providers = list(providers) if providers is not None else _default_providers()
        self._session_options = session_options
        self._events = self._plan()
        needed = self._needed_values()
        self._types, self._ranks = value_info(self._proto)
        self._opset = next((o.version for o in self._proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        self._captured = [name for name in needed if name in self.tree.producer]
        # At ``full`` every value is fetched anyway: its statistics come from the data, computed
        # by the writer while it writes (after the run), not by extra reductions inside it.
        self._moments_of = (
            {}
            if level in ("hash", "full")
            else {name: self._same_elements_source(name) for name in self._captured if self._types.get(name) in STATS_TYPES}
        )
        self._outputs_per_run = outputs_per_run
        # Graph outputs are always fetched whole: record() returns them.
        self._data = {n for n in self._captured if level != "stats" or n not in self._moments_of}
        self._data.update(name for name in self.tree.graph_outputs if name in self.tree.producer)
        self._stale = False
        self._constants: dict[str, tuple[TensorStats, str, str, tuple[int, ...]]] = {}
        self._output_buffers = HostBufferPool()
        # A bound run that fails on a changed shape is run again unbound: no need for ONNX
        # Runtime to log the failure.
        self._quiet_run = ort.RunOptions()
        self._quiet_run.log_severity_level = 4
        self._shrinking_run = ort.RunOptions()
        self._shrinking_run.log_severity_level = 4
        self._shrinking_run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._next_run_options = self._quiet_run
        self._session: ort.InferenceSession  # made by _build, again when input shapes change the plan
        self._build()
        self.device = "cuda:0" if "CUDAExecutionProvider" in self._session.get_providers() else "cpu"

    def _build(self) -> None:
        """Create the instrumented session and the batches of outputs each run fetches."""
        captured = self._captured
        graph_outputs = [name for name in self.tree.graph_outputs if name in self.tree.producer]
        sources = list(dict.fromkeys(self._moments_of.values()))
        self._prefix = {source: f"{PREFIX}{i}" for i, source in enumerate(sources)}
        self._shape_output = {n: f"{PREFIX}shape{i}" for i, n in enumerate(n for n in captured if n not in self._data)}
        size = self._outputs_per_run or max(len(captured), 1)
        chunks = [captured[i : i + size] for i in range(0, len(captured), size)] or [[]]
        chunks[0] = list(dict.fromkeys([*chunks[0], *graph_outputs]))
        self._chunks = chunks
        self._batch_of = {name: k for k, chunk in enumerate(chunks) for name in chunk}
        self._batches = [self._batch_outputs(chunk) for chunk in chunks]
        added = {
            source: moment_nodes(source, self._prefix[source], self._types[source], self._ranks.get(source), self._opset)
            for source in sources
        }
        for name, output in self._shape_output.items():
            added.setdefault(name, []).append(onnx.helper.make_node("Shape", [name], [output], name=output))
        moments = [f"{self._prefix[source]}:{part}" for source in sources for part in MOMENTS]
        if hasattr(self, "_session"):
            del self._session  # a rebuild frees the old session (its weights) before the new one loads
        self._session = self._make_session(
            [*(n for n in captured + graph_outputs if n in self._data), *moments, *self._shape_output.values()], added
        )
        # Output shapes and dtypes per (batch, input shapes and dtypes); None: do not bind.
        self._layouts: dict[tuple[Any, ...], list[tuple[tuple[int, ...], np.dtype]] | None] = {}
        self._stale = False

    def _same_elements_source(self, name: str) -> str:
        """The earliest value holding the same elements as ``name`` (through reshapes and
        transposes): statistics do not depend on the order of elements, so they are computed once."""
        while True:
            producer = self.tree.ops[self.tree.producer[name]].node
            source = producer.input[0] if producer.input else ""
            if producer.op_type not in _SAME_ELEMENTS or name != producer.output[0] or source not in self.tree.producer:
                return name
            name = source

    def _batch_outputs(self, chunk: list[str]) -> list[str]:
        """The session outputs fetched for one batch of captured values."""
        outputs: dict[str, None] = {}
        for name in chunk:
            if name in self._data:
                outputs[name] = None
            if name in self._moments_of:
                prefix = self._prefix[self._moments_of[name]]
                outputs.update(dict.fromkeys(f"{prefix}:{part}" for part in MOMENTS))
            if name in self._shape_output:
                outputs[self._shape_output[name]] = None
        return list(outputs)

    # ---------------------------------------------------------------- planning
    def _plan(self) -> list[tuple[str, Any]]:
        """Module begin/end and op events in execution (topological) order.

        A module begins before its first op and ends after its last one, so a module whose ops
        the exporter interleaved with others' is still one call, and nesting is kept.
        """
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for op in self.tree.ops:
            for route in op.scopes:
                first.setdefault(route, op.index)
                last[route] = op.index
        events: list[tuple[str, Any]] = []
        for op in self.tree.ops:
            events.extend(("begin", route) for route in op.scopes if first[route] == op.index)
            events.append(("op", op))
            events.extend(("end", route) for route in reversed(op.scopes) if last[route] == op.index)
        return events

    def _module_selected(self, route: str) -> bool:
        return self._capture["modules"] and self._selection.route(route)

    def _op_selected(self, op: GraphOp) -> bool:
        return self._capture["ops"] and self._selection.op(op)

    def _needed_values(self) -> list[str]:
        needed: dict[str, None] = {}
        for kind, item in self._events:
            if kind == "begin" and self._module_selected(item):
                needed.update(dict.fromkeys(self.tree.modules[item].inputs))
            elif kind == "end" and self._module_selected(item):
                needed.update(dict.fromkeys(self.tree.modules[item].outputs))
            elif kind == "op" and self._op_selected(item):
                needed.update(dict.fromkeys(n for n in (*item.node.input, *item.node.output) if n))
        return list(needed)

    # ---------------------------------------------------------------- sessions
    def _make_session(self, outputs: Sequence[str], added: Mapping[str, list[onnx.NodeProto]]) -> ort.InferenceSession:
        """A session over a copy of the model whose outputs are ``outputs``.

        ``added`` maps a value to nodes reading it; each group is placed right after the value's
        producer, so ONNX Runtime runs it while the value is fresh in cache and can free the value
        early instead of keeping it to the end of the graph.
        """
        proto = onnx.ModelProto()
        proto.CopyFrom(self._proto)
        graph = proto.graph
        present = set(self.tree.graph_outputs)
        graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs if name not in present)
        nodes = []
        for node in self._proto.graph.node:
            nodes.append(node)
            for name in node.output:
                nodes.extend(added.get(name, ()))
        del graph.node[:]
        graph.node.extend(nodes)
        used = {name for group in added.values() for node in group for name in node.input}
        graph.initializer.extend(
            numpy_helper.from_array(np.array(value, dtype=np.int64), name)
            for name, value in ((f"{PREFIX}row", [1, -1]), (f"{PREFIX}last_axis", [-1]))
            if name in used
        )
        options = self._session_options or ort.SessionOptions()
        if self._base_dir is not None and _config_entry(options, _EXTERNAL_DATA_FOLDER) != str(self._base_dir):
            options.add_session_config_entry(_EXTERNAL_DATA_FOLDER, str(self._base_dir))
        try:
            payload = proto.SerializeToString()
        except ValueError as exc:
            raise UsageError(
                f"the model is too large to serialise ({exc}); save it with external data and pass its path"
            ) from None
        return ort.InferenceSession(payload, options, providers=self._providers)

    # ---------------------------------------------------------------- recording
    def open(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        metadata: Mapping[str, Any] | None = None,
        durable: bool = True,
        storage_options: Mapping[str, Any] | None = None,
    ) -> OnnxTrace:
        """Start a trace at ``path``; each :meth:`OnnxTrace.run` records one step."""
        capture = {
            "level": self.level,
            "include": list(self._selection.include) if self._selection.include is not None else None,
            "exclude": list(self._selection.exclude),
            "include_ops": sorted(self._selection.include_ops) if self._selection.include_ops is not None else None,
            "exclude_ops": sorted(self._selection.exclude_ops),
            **self._capture,
            "runs_per_step": len(self._batches),
            "scope_source": self.tree.scope_source,
            "stats": (
                "computed in float64 from the fetched data"
                if self.level == "full"
                else "computed in the graph by onnxruntime: float32 row sums added in float64"
            ),
        }
        writer = TraceWriter(
            path,
            framework="onnxruntime",
            framework_version=ort.__version__,
            device=self.device,
            capture=capture,
            metadata=dict(metadata or {}),
            overwrite=overwrite,
            durable=durable,
            direct_io=True,  # the next run computes while this one's values are written
            storage_options=dict(storage_options) if storage_options is not None else None,
        )
        return OnnxTrace(self, writer, self._write_tree(writer))

    def record(
        self,
        inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        metadata: Mapping[str, Any] | None = None,
        durable: bool = True,
        storage_options: Mapping[str, Any] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Run the model on each input feed (one step each), write the trace, return the outputs."""
        feeds = [inputs] if isinstance(inputs, Mapping) else list(inputs)
        feeds = [self._check_feed(feed) for feed in feeds]
        with self.open(path, overwrite=overwrite, metadata=metadata, durable=durable, storage_options=storage_options) as trace:
            return [trace.run(feed) for feed in feeds]

    def _check_feed(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            raise UsageError(f"inputs must be a dict of input name -> array (or a list of them), got {type(feed).__name__}")
        expected = set(self.tree.graph_inputs)
        if set(feed) != expected:
            raise UsageError(f"the feed has inputs {sorted(feed)}; the model expects {sorted(expected)}")
        return {name: np.asarray(value) for name, value in feed.items()}

    def _write_tree(self, writer: TraceWriter) -> dict[str, int]:
        ids: dict[str, int] = {}
        for module in self.tree.preorder():
            parent = module.route.rpartition(".")[0] if "." in module.route else ""
            attrs: dict[str, Any] = {"scope_source": self.tree.scope_source}
            if module.qualified_class:
                attrs["qualified_class"] = module.qualified_class
            if not module.called:
                attrs["called"] = False
            if module.layouts:
                attrs["parameter_layout"] = module.layouts
            if any(slot != name.rpartition(".")[2] for slot, name in module.parameters.items()):
                attrs["parameter_source"] = module.parameters
            position = module.route and self.tree.modules[parent].children.index(module.route)
            ids[module.route] = writer.add_node(
                module.route,
                module.class_name,
                parent=None if module.route == "" else ids[parent],
                position=position or 0,
                attrs=attrs,
            )
            for position, index in enumerate(module.ops, start=len(module.children)):
                op = self.tree.ops[index]
                if not self._op_selected(op):
                    continue
                node = op.node
                op_attrs = {"op_type": node.op_type, "onnx_name": node.name}
                if node.domain:
                    op_attrs["domain"] = node.domain
                ids[op.route] = writer.add_node(
                    op.route, node.op_type, parent=ids[module.route], kind="op", position=position, attrs=op_attrs
                )
        return ids

    def _fetch_non_finite(self, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fetch, in one more run, the data of values whose in-graph moments are not finite (NaN
        or Inf inside); from the next step on, the main session fetches them whole."""
        self._data.update(names)
        self._stale = True
        return dict(zip(names, self._make_session(names, {}).run(names, feed), strict=True))

    def _record_step(
        self, writer: TraceWriter, ids: dict[str, int], step: int, feed: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        if self._stale:
            self._build()
        tree = self.tree
        records: dict[str, int] = {}
        fetched: dict[str, Any] = {}
        current = [-1]
        outputs: dict[str, np.ndarray] = {}

        def finite(prefix: str) -> bool:
            return math.isfinite(float(fetched[f"{prefix}:sum"])) and math.isfinite(float(fetched[f"{prefix}:squares"]))

        def load(batch: int) -> None:
            if batch != current[0]:
                fetched.clear()
                fetched.update(self._run_batch(batch, feed))
                non_finite = [
                    n
                    for n in self._chunks[batch]
                    if n in self._moments_of and n not in fetched and not finite(self._prefix[self._moments_of[n]])
                ]
                if non_finite:
                    fetched.update(self._fetch_non_finite(non_finite, feed))
                outputs.update((n, fetched[n]) for n in tree.graph_outputs if n in fetched)
                current[0] = batch

        def value(name: str) -> tuple[np.ndarray | None, TensorStats | None, tuple[int, ...] | None]:
            if name in feed:
                return feed[name], None, None
            load(self._batch_of[name])
            array = fetched.get(name)
            source = self._moments_of.get(name)
            if source is None:
                return array, None, None
            shape = array.shape if array is not None else tuple(int(d) for d in fetched[self._shape_output[name]])
            prefix = self._prefix[source]
            if not finite(prefix):
                # NaN or Inf inside (or a float32 overflow): the reference counts them.
                return array, None, shape
            total, squares, low, high = (float(fetched[f"{prefix}:{part}"]) for part in MOMENTS)
            return array, stats_from_moments(shape, total, squares, low, high), shape

        def put(node: int, role: str, slot: str, name: str, call: int | None) -> None:
            if not name:
                writer.add_value(step=step, stage=STAGE, node=node, role=role, slot=slot, value=None, call=call)
                return
            if name in records:
                writer.add_tensor(
                    step=step, stage=STAGE, node=node, role=role, slot=slot, call=call, same_as=records[name], level=self.level
                )
                return
            if name in tree.initializers or name in tree.parameter_aliases:
                if role == "parameter":
                    records[name] = self._put_constant(writer, step, node, slot, name)
                # An op reading an initializer refers to its parameter record, if captured.
                return
            array, stats, shape = value(name)
            if name in tree.graph_outputs and array is not None:
                outputs[name] = array
            dtype = None
            if array is None:
                dtype = dtype_name(self._types.get(name, 0))
            records[name] = writer.add_tensor(
                step=step,
                stage=STAGE,
                node=node,
                role=role,
                slot=slot,
                call=call,
                array=array,
                level=self.level,
                stats=stats,
                dtype=dtype,
                shape=shape,
            )

        if self._capture["parameters"]:
            for module in tree.preorder():
                if self._selection.route(module.route):
                    for slot, name in module.parameters.items():
                        put(ids[module.route], "parameter", slot, name, None)
        counter = 0
        begins: dict[str, int] = {}
        for kind, item in self._events:
            if kind == "begin":
                begins[item] = counter
                counter += 1
                if self._module_selected(item):
                    for index, name in enumerate(tree.modules[item].inputs):
                        put(ids[item], "input", str(index), name, 0)
            elif kind == "end":
                if self._module_selected(item):
                    for index, name in enumerate(tree.modules[item].outputs):
                        put(ids[item], "output", str(index), name, 0)
                writer.add_call(step=step, stage=STAGE, node=ids[item], call=0, begin=begins[item], end=counter)
                counter += 1
            elif self._op_selected(item):
                node_id = ids[item.route]
                for index, name in enumerate(item.node.input):
                    put(node_id, "input", str(index), name, 0)
                for index, name in enumerate(item.node.output):
                    put(node_id, "output", str(index), name, 0)
                writer.add_call(step=step, stage=STAGE, node=node_id, call=0, begin=counter, end=counter + 1)
                counter += 2
            else:
                counter += 2
        if not outputs:
            load(0)  # the batch holding the graph outputs when nothing in it was recorded
        # a graph output is computed, or one of the inputs passed straight through
        return {name: outputs[name] if name in outputs else feed[name] for name in tree.graph_outputs}

    def _run_batch(self, batch: int, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session for one batch of outputs: output name -> value.

        At ``full``, the first run for given input shapes lets ONNX Runtime allocate the
        outputs, and notes their shapes; later runs bind the large outputs to reused,
        page-aligned buffers (IOBinding), which ONNX Runtime computes into. Fresh outputs cost a
        page fault per 4 KiB while the writer still holds the previous step's values: a recorded
        GPT-2-sized run took twice as long. Aligned buffers also go to the disk without a
        staging copy. A value whose shape depends on the data makes a bound run fail; those
        input shapes are then run unbound.
        """
        names = self._batches[batch]
        signature = (batch, *((name, feed[name].shape, feed[name].dtype.str) for name in sorted(feed)))
        layout = self._layouts.get(signature)
        if layout is not None:
            binding = self._session.io_binding()
            for name, value in feed.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            bound: dict[str, np.ndarray] = {}
            for name, (shape, dtype) in zip(names, layout, strict=True):
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes < _BIND_MIN_BYTES:
                    binding.bind_output(name, "cpu")  # ONNX Runtime allocates it
                    continue
                bound[name] = self._output_buffers.take(nbytes, nbytes).view(dtype).reshape(shape)
                binding.bind_output(name, "cpu", 0, dtype, shape, bound[name].ctypes.data)
            options, self._next_run_options = self._next_run_options, self._quiet_run
            try:
                self._session.run_with_iobinding(binding, options)
            except _BOUND_RUN_ERRORS:  # a shape changed with the data (the feed itself was checked)
                self._layouts[signature] = None
            else:
                return {
                    name: bound[name] if name in bound else value.numpy()
                    for name, value in zip(names, binding.get_outputs(), strict=True)
                }
        values = self._session.run(names, feed)
        if signature in self._layouts:
            return dict(zip(names, values, strict=True))
        # Only at ``full`` does the writer hold a step's values while the next run computes; at
        # the other levels they are summarised and freed at once, and buffers would only add memory.
        if self.level != "full" or not all(isinstance(v, np.ndarray) and v.dtype.kind in _BINDABLE_KINDS for v in values):
            self._layouts[signature] = None
            return dict(zip(names, values, strict=True))
        self._layouts[signature] = [(v.shape, v.dtype) for v in values]
        # Memory ONNX Runtime allocated outputs in stays in its arena once they are freed: move
        # them to the recorder's buffers, and have the next run give that memory back.
        copies = {
            name: self._output_buffers.copy(value, value.nbytes) if value.nbytes >= _BIND_MIN_BYTES else value
            for name, value in zip(names, values, strict=True)
        }
        if self._session.get_session_options().enable_cpu_mem_arena:
            self._next_run_options = self._shrinking_run
        return copies

    def _put_constant(self, writer: TraceWriter, step: int, node: int, slot: str, name: str) -> int:
        """Record an initializer; its statistics and hash are computed once per recorder."""
        source = self.tree.parameter_aliases.get(name, name)
        array = None
        summary = self._constants.get(source)
        if summary is None or self.level == "full":
            array = self._initializer(source)
        if summary is None:
            assert array is not None
            summary = self._constants[source] = (compute_stats(array), content_hash(array), dtype_of(array).name, array.shape)
        stats, digest, dtype, shape = summary
        return writer.add_tensor(
            step=step,
            stage=STAGE,
            node=node,
            role="parameter",
            slot=slot,
            array=array,
            level=self.level,
            stats=stats,
            hash=digest,
            dtype=dtype,
            shape=shape,
        )

    def _initializer(self, name: str) -> np.ndarray:
        tensor = self.tree.initializers[name]
        try:
            return numpy_helper.to_array(tensor, base_dir=str(self._base_dir or ""))
        except (OSError, ValueError) as exc:
            raise InputFileError(f"initializer {tensor.name!r} cannot be read: {exc}") from None


class OnnxTrace:
    """An open trace of an :class:`OnnxRecorder`: each :meth:`run` is one step.

    Use it as a context manager; leaving the block normally marks the trace complete, an
    exception leaves it readable and marked incomplete.
    """

    def __init__(self, recorder: OnnxRecorder, writer: TraceWriter, node_ids: dict[str, int]) -> None:
        self._recorder = recorder
        self._writer = writer
        self._node_ids = node_ids
        self._step = 0
        self.path = writer.path

    def run(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the model on ``feed``, record the step, and return the graph outputs."""
        outputs = self._recorder._record_step(self._writer, self._node_ids, self._step, self._recorder._check_feed(feed))
        self._writer.end_step(self._step)
        self._step += 1
        return outputs

    def flush(self) -> None:
        """Publish every step run so far (each :meth:`run` already publishes its step)."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> OnnxTrace:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._writer.__exit__(exc_type, exc, tb)


def record_onnx(
    model: str | os.PathLike[str] | onnx.ModelProto,
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
    durable: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> list[dict[str, np.ndarray]]:
    """Run ``model`` in ONNX Runtime on ``inputs`` and record every intermediate value to ``path``.

    Parameters
    ----------
    model:
        A ``.onnx`` path (external data is read from its folder) or a loaded ``onnx.ModelProto``.
    inputs:
        The feed, ``{input name: array}``, or a list of feeds (one trace step each).
    path:
        The trace folder to write, or a URL (``s3://bucket/run``; docs/storage.md).
    overwrite, metadata, durable, storage_options:
        Replace an existing trace; free-form metadata for the manifest; fsync what is written;
        the URL's file-system options (see :class:`~tracespec.storage.TraceWriter`).
    **options:
        What :class:`OnnxRecorder` takes: ``providers``, ``capture``, ``include``, ``exclude``,
        ``include_ops``, ``exclude_ops``, ``modules``, ``ops``, ``parameters``,
        ``outputs_per_run``, ``session_options``.

    Returns
    -------
    list of dict
        The model's graph outputs, one dict per feed.
    """
    recorder = _recorder(model, options)
    return recorder.record(inputs, path, overwrite=overwrite, metadata=metadata, durable=durable, storage_options=storage_options)


def _recorder(model: str | os.PathLike[str] | onnx.ModelProto, options: dict[str, Any]) -> OnnxRecorder:
    """An :class:`OnnxRecorder`, or a :class:`UsageError` naming an option it does not take (the
    PyTorch and Paddle options ``roles``, ``levels``, ``every``... have no meaning for a graph)."""
    known = [name for name in inspect.signature(OnnxRecorder.__init__).parameters if name not in ("self", "model")]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(
                f"record_onnx() got an unknown option {name!r}{hint} Options: {', '.join(known)}, "
                "overwrite, metadata, durable, storage_options"
            )
    return OnnxRecorder(model, **options)


def accepts(model: Any) -> bool:
    """Whether this adapter records ``model``: an ``onnx.ModelProto`` or a path to a ``.onnx`` file."""
    return isinstance(model, onnx.ModelProto) or (isinstance(model, (str, os.PathLike)) and str(model).endswith(".onnx"))


def record(model: str | os.PathLike[str] | onnx.ModelProto, path: str | os.PathLike[str], **options: Any) -> OnnxTrace:
    """The adapter-registry entry point (``tracespec.record(onnx_model, path)``): an open trace.

    ``overwrite``, ``metadata``, ``durable`` and ``storage_options`` go to the trace, everything
    else to :class:`OnnxRecorder`; call ``run(feed)`` on the result once per step, inside a
    ``with`` block.
    """
    trace_options = {key: options.pop(key) for key in ("overwrite", "metadata", "durable", "storage_options") if key in options}
    return _recorder(model, options).open(path, **trace_options)
