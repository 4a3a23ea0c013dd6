"""Record PyTorch runs (``tracespec.record(torch_module, path)``).

Constraints:
- No observer effect: hooks read tensors and never change what the model computes; nothing
  touches an RNG. Modules are observed as :class:`HookedRecorder` says (``adapters/_hooked.py``);
  their inputs that require grad are handed to them as ``x.view_as(x)``. When a module modifies
  its input in place (``ReLU(inplace=True)``), PyTorch drops hooks on the view; a hook on the
  input tensor itself stands in, giving the gradient of the input's value before the
  modification.
- Devices: statistics are computed where the tensor lives, in float64. CPU tensors are summarised
  immediately; CUDA tensors are copied to pinned host memory with non-blocking copies and their
  statistics stay on the device until the records are written (at the step end or when too many
  wait), so no hook synchronises the device.
- torch.compile: the hooks are traced into the compiled code. There they only append to a list
  (the *tape*, a side effect Dynamo replays after each compiled piece) what they would record:
  each tensor's statistics, computed by torch ops inside the graph (``capture="stats"``), or the
  tensor itself, which leaves the graph as an extra output (``"hash"``, ``"full"``). The root
  module's hooks, which run outside compiled code, and every hook that runs eagerly record what
  the tape holds (call ids, events, hashing, the writer) before their own call, so the calls keep
  eager's order. A forward that records gradients runs the hooks eagerly instead
  (``torch.compiler.disable``: a graph break at each such module call), as gradient hooks need
  real tensors. A compiled wrapper is recorded as the module it wraps; only the selected modules
  are hooked (see ``docs/recording.md``, "Compiled models").
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import threading
import warnings
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from tracespec.adapters._common import OpDescription, Summary, op_name
from tracespec.adapters._hooked import ForwardPostHook, ForwardPreHook, HookedRecorder
from tracespec.adapters._host import fast_stats, stats_from_sums
from tracespec.adapters._options import RecordOptions, parse_options
from tracespec.adapters._slots import flatten, input_leaves
from tracespec.errors import UsageError
from tracespec.format.dtypes import DTYPES
from tracespec.format.stats import TensorStats, compute_stats, content_hash

__all__ = [
    "FRAMEWORK",
    "CompiledPrecisionWarning",
    "TorchRecorder",
    "accepts",
    "compiled_routes",
    "cpu_stats",
    "device_moments",
    "is_recordable",
    "numpy_view",
    "record",
    "stats_from_moments",
    "torch_op_name",
    "uncompiled",
]

FRAMEWORK: Final = "torch"

_DTYPE_NAMES: Final[dict[torch.dtype, str]] = {getattr(torch, name): name for name in DTYPES}

# dtypes numpy lacks: viewed as the unsigned integers the format stores them as, then as their
# ml_dtypes type.
_BIT_VIEWS: Final[dict[torch.dtype, tuple[torch.dtype, Any]]] = {
    getattr(torch, name): (getattr(torch, dtype.zarr_data_type), dtype.numpy)
    for name, dtype in DTYPES.items()
    if dtype.stored_as_bits
}

_ROUNDED_AT_BOUNDARIES: Final = frozenset({"bfloat16", "float16"})
"""Dtypes whose values Inductor keeps in float32 inside a fused kernel (``bench/bench_compiled_numerics.py``)."""


class CompiledPrecisionWarning(UserWarning):
    """Recording the gradients of a compiled low-precision model splits it at every recorded
    module, where its values are rounded as eager PyTorch rounds them (see ``docs/recording.md``)."""


def is_recordable(value: Any) -> bool:
    """Whether ``value`` is a tensor tracespec records (a strided tensor of a dtype the format has).

    A plain function of the value, so that Dynamo traces it inside compiled hooks.
    """
    return isinstance(value, torch.Tensor) and value.dtype in _DTYPE_NAMES and value.layout == torch.strided


def accepts(model: Any) -> bool:
    """Whether this adapter records ``model`` (a ``torch.nn.Module``)."""
    return isinstance(model, torch.nn.Module)


def record(model: torch.nn.Module, path: str | os.PathLike[str], **options: Any) -> TorchRecorder:
    """Record ``model``; see :func:`tracespec.record` and ``docs/recording.md``."""
    return TorchRecorder(model, path, parse_options(**options))


def uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    """The module a ``torch.compile(module)`` wrapper runs, or ``model`` itself.

    ``torch.compile`` returns an ``OptimizedModule`` holding the module as ``_orig_mod``: its
    tree is the module's, one level down. Recording the module itself names every module by the
    route it has in the uncompiled model, so a compiled and an eager trace of one model align.
    """
    dynamo = _dynamo()
    while dynamo is not None and isinstance(model, dynamo.OptimizedModule):
        model = model._orig_mod
    return model


def compiled_routes(model: torch.nn.Module) -> dict[str, bool]:
    """Where ``model`` is compiled: ``{route: fullgraph}`` for a ``torch.compile`` wrapper (route
    ``""``) and for each module compiled in place (``module.compile()``), routes of
    :func:`uncompiled` ``(model)``; empty for a model that is not compiled.

    ``module.compile()`` keeps the compiled call in ``_compiled_call_impl``, a function whose
    closure holds its Dynamo context (``fullgraph`` is read there; where a torch version lays the
    closure out otherwise, the module counts as compiled without ``fullgraph``).
    """
    dynamo = _dynamo()
    if dynamo is None:
        return {}
    found: dict[str, bool] = {}
    if isinstance(model, dynamo.OptimizedModule):
        found[""] = bool(model.dynamo_ctx.fullgraph)
    for route, module in uncompiled(model).named_modules():
        compiled_call = getattr(module, "_compiled_call_impl", None)
        if compiled_call is not None:
            context = inspect.getclosurevars(compiled_call).nonlocals.get("self") if inspect.isfunction(compiled_call) else None
            found[route] = found.get(route, False) or bool(getattr(context, "fullgraph", False))
    return found


# ------------------------------------------------------------------------------ host copies
def numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array sharing the memory of a contiguous CPU tensor, with its true dtype."""
    bits = _BIT_VIEWS.get(tensor.dtype)
    if bits is not None:
        return tensor.view(bits[0]).numpy().view(bits[1])
    return tensor.numpy()


def _device_to_host(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
    """A pinned host copy of a device tensor, in flight, and the event that marks its end."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor.detach(), non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


# ------------------------------------------------------------------------------ statistics
_TORCH_STATS_DTYPES: Final = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_STATS_BLOCK: Final = 1 << 20  # float64 elements: an 8 MiB scratch, reused
_scratch = threading.local()


def cpu_stats(tensor: torch.Tensor) -> TensorStats:
    """The statistics of a CPU tensor, with torch's kernels on its intra-op threads.

    A hook runs while the model's other intra-op threads wait for the next operator (spinning,
    with OpenMP): torch's reductions put them to work, where numpy would run on the hook's
    thread alone. Min and max in the tensor's dtype, then a block at a time a copy into a reused
    float64 scratch, summed and dotted with itself (fresh float64 temporaries of a large tensor
    would cost a page fault per 4 KiB). :func:`stats_from_sums` keeps the reference's semantics.
    Other dtypes go to numpy's :func:`fast_stats`.
    """
    flat = tensor.detach().reshape(-1)
    count = flat.numel()
    if flat.dtype not in _TORCH_STATS_DTYPES or count == 0:
        return fast_stats(numpy_view(flat))
    scratch: torch.Tensor | None = getattr(_scratch, "tensor", None)
    if scratch is None:
        scratch = _scratch.tensor = torch.empty(_STATS_BLOCK, dtype=torch.float64)
    low, high = torch.aminmax(flat)
    total = squares = 0.0
    for start in range(0, count, _STATS_BLOCK):
        work = scratch[: min(_STATS_BLOCK, count - start)]
        work.copy_(flat[start : start + _STATS_BLOCK])
        total += float(work.sum())
        squares += float(torch.dot(work, work))
    return stats_from_sums(count, float(low), float(high), total, squares, lambda: compute_stats(numpy_view(flat)))


def device_moments(tensor: torch.Tensor) -> torch.Tensor:
    """The statistics of a tensor as a float64 tensor on its device, without synchronising.

    ``[count, finite, sum, sum of squares, m2, min, max, nan, inf]`` over the finite elements,
    with ``m2`` (squared deviations from the mean) in a second pass. Read it with
    :func:`stats_from_moments` once the device is done. Meant for accelerators, where the extra
    passes are cheap and a host round trip per tensor is not.
    """
    x = tensor.detach().reshape(-1)
    if x.is_complex():
        x = x.abs()
    x = x.to(torch.float64)
    if x.numel() == 0:
        return torch.zeros(9, dtype=torch.float64, device=x.device)
    finite_mask = torch.isfinite(x)
    finite = finite_mask.sum(dtype=torch.float64)
    nan = torch.isnan(x).sum(dtype=torch.float64)
    values = torch.where(finite_mask, x, 0.0)
    total = values.sum()
    squares = torch.dot(values, values)
    deviations = torch.where(finite_mask, x - total / finite.clamp(min=1), 0.0)
    m2 = torch.dot(deviations, deviations)
    low = torch.where(finite_mask, x, math.inf).amin()
    high = torch.where(finite_mask, x, -math.inf).amax()
    count = torch.full((), float(x.numel()), dtype=torch.float64, device=x.device)
    return torch.stack([count, finite, total, squares, m2, low, high, nan, count - finite - nan])


def stats_from_moments(moments: list[float]) -> TensorStats:
    """:class:`TensorStats` from the values of :func:`device_moments`."""
    count, finite, total, squares, m2, low, high, nan, inf = moments
    if finite == 0:
        return TensorStats(int(count), None, None, None, None, None, int(nan), int(inf))
    return TensorStats(
        int(count), low, high, total / finite, math.sqrt(max(m2, 0.0) / finite), math.sqrt(squares), int(nan), int(inf)
    )


_WIDENED: Final = frozenset({torch.bfloat16, torch.float16})
"""Dtypes that leave compiled code widened to float32 (see :func:`graph_leaves`)."""


def graph_leaves(
    leaves: Iterable[tuple[str, Any]], level: str | None
) -> list[tuple[str, Any, torch.dtype | None, tuple[int, ...] | None]]:
    """What a hook traced into compiled code keeps of a call's ``(slot, leaf)`` pairs, for the tape.

    At ``stats`` each tensor becomes its :func:`device_moments`, computed by torch ops inside the
    graph, with its dtype and shape: ``(slot, moments, dtype, shape)``. At ``hash`` and ``full``
    the tensor leaves the graph as an output, to be summarised after it: ``(slot, tensor, dtype,
    None)``. A value that is no tensor is kept as it is: ``(slot, leaf, None, None)``. Nothing
    without a level.

    A bfloat16 or float16 tensor leaves the graph widened to float32 (and is rounded to its dtype
    after it): handed out in its own dtype, it would have to be stored rounded where Inductor
    keeps it in float32 inside a fused kernel, and the kernels after it would read the rounded
    copy: the recording would change what the model computes. Statistics are computed from the
    values the graph holds: where Inductor fuses them into the kernel that computes the tensor,
    those float32 values (what the next module computes from); where it reads the stored tensor,
    its values in its dtype.
    """
    if level is None:
        return []
    kept: list[tuple[str, Any, torch.dtype | None, tuple[int, ...] | None]] = []
    for slot, leaf in leaves:
        if not is_recordable(leaf):
            kept.append((slot, leaf, None, None))
        elif level == "stats":
            kept.append((slot, device_moments(leaf), leaf.dtype, tuple(leaf.shape)))
        else:
            kept.append((slot, leaf.float() if leaf.dtype in _WIDENED else leaf, leaf.dtype, None))
    return kept


def graph_summary(moments: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> Summary:
    """The :class:`Summary` of a tensor whose moments were computed inside compiled code."""
    summary = Summary(_DTYPE_NAMES[dtype], tuple(int(d) for d in shape))
    if moments.device.type == "cpu":
        summary.stats = stats_from_moments(moments.tolist())
    else:  # read once the device is done, as summarize does

        def finish(s: Summary) -> None:
            s.stats = stats_from_moments(moments.tolist())

        summary.finish = finish
    return summary


# ------------------------------------------------------------------------------ ops
_NOT_OPS: Final = frozenset(
    {
        # what describes a tensor or hands its values to Python: nothing is computed
        "size",
        "dim",
        "numel",
        "nelement",
        "ndimension",
        "stride",
        "storage_offset",
        "element_size",
        "is_contiguous",
        "is_floating_point",
        "is_complex",
        "is_signed",
        "is_nonzero",
        "is_same_size",
        "is_set_to",
        "has_names",
        "get_device",
        "data_ptr",
        "untyped_storage",
        "dim_order",
        "item",
        "tolist",
        "numpy",
        "type",
        "equal",
        "__len__",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "__format__",
        "__repr__",
        "__hash__",
        "__iter__",
        "__contains__",
        "__reduce_ex__",
        "__deepcopy__",
        "__setstate__",
        "__array__",
        "__array_wrap__",
        "__dlpack__",
        "__dlpack_device__",
        # autograd bookkeeping
        "backward",
        "register_hook",
        "register_post_accumulate_grad_hook",
        "retain_grad",
        "requires_grad_",
    }
)
"""Tensor functions called in forward code that are not recorded as ops."""

_PROPERTY_OPS: Final = frozenset({"T", "mT", "H", "mH", "real", "imag"})
"""Tensor properties that compute (``k.T``); the others (``shape``, ``grad``, ``data``) only read."""


def torch_op_name(func: Callable[..., Any]) -> tuple[str, bool] | None:
    """The name a torch function or tensor method is recorded under and whether it works in place
    (see :func:`op_name`); None for what is not an op (:data:`_NOT_OPS`, torch's private helpers,
    properties that only read)."""
    name = getattr(func, "__name__", None)
    if name is None or name in _NOT_OPS:
        return None
    if name == "__get__":
        prop = getattr(getattr(func, "__self__", None), "__name__", None)
        return (prop, False) if prop in _PROPERTY_OPS else None
    if name.startswith("_") and not name.startswith("__"):
        return None
    return op_name(name)


def _qualified_name(func: Callable[..., Any]) -> str:
    owner = getattr(func, "__self__", None)
    if getattr(func, "__name__", None) == "__get__" and owner is not None:
        return f"torch.Tensor.{owner.__name__}"
    module = getattr(func, "__module__", None) or "torch"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    return (
        f"{module}.{qualname}".replace("torch._C.TensorBase.", "torch.Tensor.")
        .replace("torch.TensorBase.", "torch.Tensor.")
        .replace("torch._tensor.Tensor.", "torch.Tensor.")
    )


_TORCH_DIR: Final = os.path.dirname(torch.__file__) + os.sep
_DISPATCH_FILES: Final = frozenset(
    os.path.join(_TORCH_DIR, *parts)
    for parts in (("overrides.py",), ("_tensor.py",), ("functional.py",), ("nn", "functional.py"), ("_jit_internal.py",))
)
"""Where torch's Python functions hand themselves to a function mode: not the caller."""


class _OpMode(TorchFunctionMode):
    """Hands every torch function and tensor method called while recording to the recorder.

    Torch disables the mode while its handler runs, so what an op computes internally (and what
    the recorder computes) is not seen again: an op is the outermost call made by forward code.
    """

    def __init__(self, recorder: TorchRecorder) -> None:
        super().__init__()
        self._recorder = recorder

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        return self._recorder.call_op(func, self._recorder.describe_op(func), args, kwargs or {})


# ------------------------------------------------------------------------------ recorder
def _dynamo() -> Any:
    """``torch._dynamo`` where something already imported it (``torch.compile`` does), else None.

    Importing it takes about a second; a process that never compiled has no compiled code to
    keep the recording out of, so recording an eager model never pays for it.
    """
    return sys.modules.get("torch._dynamo")


def _forget_compiled_code() -> None:
    """Drop the code torch.compile cached, when it would not notice hooks come and go.

    Dynamo does not guard on module hooks by default (``skip_nnmodule_hook_guards``): code
    compiled before the recording would run without the hooks (submodules silently not
    recorded), and code compiled during it would keep the model split at every module after.
    Everything compiled is compiled again at its next call.
    """
    dynamo = _dynamo()
    if dynamo is not None and dynamo.config.skip_nnmodule_hook_guards:
        torch.compiler.reset()


class TorchRecorder(HookedRecorder):
    """Records a ``torch.nn.Module`` through forward pre/post hooks and tensor gradient hooks."""

    framework = FRAMEWORK
    # A module that modifies its input in place (ReLU(inplace=True)) makes PyTorch drop the hooks
    # on the view: a hook on the input tensor itself stands in.
    hooks_input_bases = True
    framework_dir = _TORCH_DIR
    dispatch_files = _DISPATCH_FILES

    def __init__(self, model: torch.nn.Module, path: str | os.PathLike[str], options: RecordOptions) -> None:
        compiled = compiled_routes(model)
        fullgraph = [route or "the model" for route, full in compiled.items() if full]
        if fullgraph:
            # Dynamo would raise at the first hook, inside the model, with a hint to remove
            # torch.compiler.disable.
            raise UsageError(
                f"tracespec.record: {', '.join(fullgraph)} was compiled with fullgraph=True, but recording "
                "breaks the graph where its work runs outside compiled code (the root module's hooks, and every "
                "recorded module's while gradients are recorded); compile it without fullgraph=True to record it"
            )
        if options.ops is not None and compiled:
            raise UsageError(
                "tracespec.record: ops= records the functional code of an eager model, but this model is "
                "compiled (torch.compile), so its ops run inside compiled graphs; record the model without "
                "torch.compile to see them, or drop ops="
            )
        self._compiled = bool(compiled)
        self._hook_guards_skipped: bool | None = None  # Dynamo's setting, while this recording changes it
        self._low_precision = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()} & _ROUNDED_AT_BOUNDARIES)
        # What hooks traced into compiled code keep, in call order: (node id, whether the call
        # ends, graph_leaves(...)); recorded by settle().
        self._tape: list[tuple[int, bool, list[tuple[str, Any, Any, Any]]]] = []
        self._node_by_id: dict[int, Any] = {}
        # Whether the hooks traced into compiled code record the current step: Dynamo guards on
        # it, so a step that is not recorded (every=, steps=) runs code compiled without them.
        self._recording_step = [True]
        self._split_warned = False
        super().__init__(uncompiled(model), path, options)
        self._op_mode: TorchFunctionMode | None = None  # an _OpMode while ops are recorded
        self._op_descriptions: dict[Any, OpDescription | None] = {}

    def _reset_step_state(self) -> None:
        super()._reset_step_state()
        self._recording_step[0] = self.active

    # ---------------------------------------------------------------- description
    def framework_version(self) -> str:
        return str(torch.__version__)

    def device_name(self) -> str:
        first = next(iter(self.model.parameters()), None)
        return str(first.device) if first is not None else "cpu"

    def distributed(self) -> tuple[int, int] | None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return None

    def named_modules(self) -> Iterable[tuple[str, Any]]:
        named: Iterable[tuple[str, Any]] = self.model.named_modules()
        return named

    def local_tensors(self, module: Any, role: str) -> Iterable[tuple[str, Any]]:
        named: Iterable[tuple[str, Any]] = (
            module.named_parameters(recurse=False) if role == "parameter" else module.named_buffers(recurse=False)
        )
        return named

    def is_tensor(self, value: Any) -> bool:
        return is_recordable(value)

    def tensor_version(self, tensor: Any) -> int:
        return int(tensor._version)

    def tensor_nbytes(self, tensor: Any) -> int:
        return int(tensor.numel() * tensor.element_size())

    def dedup_key(self, tensor: Any) -> Hashable:
        # Views of the same memory with the same geometry hold the same values: this also
        # catches a gradient handed on as a new tensor object over the same buffer.
        return (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device)

    def optimizer_state(self, optimizer: Any) -> Iterable[tuple[Any, str, Any]]:
        for group in optimizer.param_groups:
            for param in group["params"]:
                for key, value in optimizer.state.get(param, {}).items():
                    yield param, str(key), value

    # ---------------------------------------------------------------- summaries
    def summarize(self, tensor: Any, level: str) -> Summary:
        tensor = tensor.detach()
        summary = Summary(_DTYPE_NAMES[tensor.dtype], tuple(int(d) for d in tensor.shape))
        if tensor.device.type == "cpu":
            # Statistics with torch's kernels (see cpu_stats), the hash with xxh3 on the
            # tensor's own memory or on the copy.
            tensor = tensor.resolve_conj().resolve_neg()
            if level == "full":
                # torch's copy runs on the intra-op threads too
                buffer = torch.from_numpy(self._host_buffers.take(tensor.nbytes))
                copy = buffer.view(tensor.dtype).view(tensor.shape).copy_(tensor)
                values = summary.array = numpy_view(copy)
            else:
                values = numpy_view(tensor)
            if level != "hash":
                summary.stats = cpu_stats(tensor)
            if level != "stats":
                summary.hash = content_hash(values)
            return summary
        moments = device_moments(tensor) if level != "hash" else None
        host, event = _device_to_host(tensor) if level != "stats" else (None, None)

        def finish(s: Summary) -> None:
            if moments is not None:
                s.stats = stats_from_moments(moments.tolist())
            if host is not None and event is not None:
                event.synchronize()
                array = numpy_view(host)
                s.hash = content_hash(array)
                s.array = array if level == "full" else None

        summary.finish = finish
        return summary

    # ---------------------------------------------------------------- hooks
    def install_hooks(self) -> None:
        dynamo = _dynamo()
        _forget_compiled_code()
        if self._compiled and not all(node.selected for node in self._nodes):
            # Some instances of a class hooked and others not: Dynamo must tell them apart, or
            # the code compiled for an unhooked Block would run for a hooked one, and the hooks
            # inside it would not run. Guarded on hooks, each hook state compiles its own code.
            self._hook_guards_skipped = dynamo.config.skip_nnmodule_hook_guards
            dynamo.config.skip_nnmodule_hook_guards = False
        self._node_by_id = {node.id: node for node in self._nodes}
        super().install_hooks()
        if dynamo is not None and not self._nodes[0].selected:
            # The root's forward ends outside compiled code: there the tape is recorded, even
            # where the root is not.
            self._handles.append(self.model.register_forward_hook(self._out_of_graph(self._settle_hook), with_kwargs=True))
        if self.options.ops is not None:
            op_mode: TorchFunctionMode = _OpMode(self)
            op_mode.__enter__()
            self._op_mode = op_mode

    def forward_hooks(self, node: Any) -> tuple[ForwardPreHook, ForwardPostHook] | None:
        if _dynamo() is None:
            # No compiled code in this process: plain hooks, recording as the model runs.
            return self._pre_hook, self._post_hook
        if not node.selected:
            # Unhooked, what the selection leaves out between two recorded modules stays one
            # compiled region (fused by Inductor).
            return None
        if node.module is self.model:
            # The root's hooks run outside the model's compiled code (or split it only before
            # and after its forward): there the tape is recorded, once per forward.
            return self._out_of_graph(self._pre_hook), self._out_of_graph(self._post_hook)
        return self._traced_hooks(node)

    def hook_forward(self, module: Any, pre_hook: ForwardPreHook, post_hook: ForwardPostHook) -> list[Any]:
        return [
            module.register_forward_pre_hook(pre_hook, with_kwargs=True),
            module.register_forward_hook(post_hook, with_kwargs=True),
        ]

    def grad_enabled(self) -> bool:
        return torch.is_grad_enabled()

    def requires_grad(self, tensor: Any) -> bool:
        return bool(tensor.requires_grad)

    def identity_view(self, tensor: Any) -> Any:
        return tensor.view_as(tensor)

    @staticmethod
    def _out_of_graph(hook: Callable[..., Any]) -> Any:
        """``hook`` kept out of compiled code: Dynamo runs it eagerly, on real tensors (where
        called from inside a graph, a graph break)."""
        return torch.compiler.disable(hook, reason="tracespec records outside compiled graphs")

    def _traced_hooks(self, node: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """The forward hooks of a module that may run inside compiled code.

        Run eagerly, they record as the plain hooks do. Traced by Dynamo, they append what they
        would record to the tape (see :func:`graph_leaves`), which :meth:`settle` records after
        the compiled piece; everything they read is a constant of the closure, so the code
        Dynamo compiles for them holds no guard on the recorder. Where the call's gradients are
        recorded and autograd is on, they run eagerly (a graph break): gradient hooks need real
        tensors.
        """
        tape, recording, node_id = self._tape, self._recording_step, node.id
        input_level, output_level = node.levels["input"], node.levels["output"]
        backward = self.wants_backward(node)
        eager_pre, eager_post = self._out_of_graph(self._pre_hook), self._out_of_graph(self._post_hook)

        def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if not torch.compiler.is_compiling():
                return eager_pre(module, args, kwargs)
            if not recording[0]:
                return None
            if backward and torch.is_grad_enabled():
                return eager_pre(module, args, kwargs)
            tape.append((node_id, False, graph_leaves(input_leaves(args, kwargs, is_recordable), input_level)))
            return None

        def post_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if not torch.compiler.is_compiling() or (recording[0] and backward and torch.is_grad_enabled()):
                eager_post(module, args, kwargs, output)
            elif recording[0]:
                tape.append((node_id, True, graph_leaves(flatten(output, "", is_recordable), output_level)))

        # Where a hook breaks the graph (split_pre, eager_post), Dynamo runs the hook on its own
        # and would compile it as a frame of its own, once per module class (guarded on the
        # module's type) up to its recompile limit, and warn: run as a frame, it runs eagerly.
        # Inlined into a module's compiled call, it is still traced.
        dynamo = _dynamo()
        for hook in (pre_hook, post_hook):
            dynamo.eval_frame.skip_code(hook.__code__)
        return pre_hook, post_hook

    def settle(self) -> None:
        """Record the calls the tape holds, in order, as the hooks would have recorded them."""
        if not self._tape:
            return
        entries = self._tape[:]
        self._tape.clear()  # before recording: recording may raise (stop_on_nonfinite)
        # A tensor the graph handed out twice (a module's output, the next one's input) is
        # narrowed once, so that the second record is a same_as of the first.
        narrowed: dict[int, torch.Tensor] = {}

        def leaf(value: Any, dtype: torch.dtype | None, shape: tuple[int, ...] | None) -> Any:
            if dtype is None:
                return value
            if shape is not None:
                return graph_summary(value, dtype, shape)
            if value.dtype == dtype:
                return value
            if id(value) not in narrowed:
                narrowed[id(value)] = value.to(dtype)
            return narrowed[id(value)]

        for node_id, ends, leaves in entries:
            node = self._node_by_id[node_id]
            flat = [(slot, leaf(value, dtype, shape)) for slot, value, dtype, shape in leaves]
            if ends:
                self.call_ends(node, flat)
            else:
                self.call_begins(node, flat)

    def _settle_hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        self.settle()

    def install_optimizer_hooks(self, optimizer: Any) -> None:
        def before_step(opt: Any, args: Any, kwargs: Any) -> None:
            self.settle()
            self.before_optimizer_step()

        self._handles.append(optimizer.register_step_pre_hook(before_step))
        self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_optimizer_step(opt)))

    def remove_hooks(self) -> None:
        if self._op_mode is not None:
            self._op_mode.__exit__(None, None, None)
            self._op_mode = None
        super().remove_hooks()
        if self._hook_guards_skipped is not None:
            _dynamo().config.skip_nnmodule_hook_guards = self._hook_guards_skipped
            self._hook_guards_skipped = None
        _forget_compiled_code()

    def _warn_split(self) -> None:
        """Say once that a compiled low-precision model is recorded between compiled pieces."""
        if self._compiled and self._low_precision and not self._split_warned:
            self._split_warned = True
            warnings.warn(
                f"tracespec.record: this compiled model holds {', '.join(self._low_precision)} parameters and its "
                "gradients are recorded, so it runs as one compiled piece per recorded module, whose outputs are "
                "rounded to their dtype where Inductor's fused kernels keep them in float32: the recorded values "
                "may differ from the unrecorded compiled model's. Record the forward under torch.no_grad() or "
                "without gradient roles (roles=['inputs', 'outputs']) to keep the recording inside the compiled "
                "graph (docs/recording.md, Compiled models)",
                CompiledPrecisionWarning,
                stacklevel=2,
            )

    def watch_inputs(
        self, forward_call: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self.observes_backward(forward_call):
            self._warn_split()
        return super().watch_inputs(forward_call, args, kwargs)

    def describe_op(self, func: Any) -> OpDescription | None:
        """How ``func`` is recorded as an op (see :func:`op_name`), None when it is not one."""
        if func not in self._op_descriptions:
            named = torch_op_name(func)
            self._op_descriptions[func] = None if named is None else (*named, _qualified_name(func))
        return self._op_descriptions[func]
