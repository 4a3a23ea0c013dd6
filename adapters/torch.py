"""Record PyTorch runs (``tracespec.record(torch_module, path)``).

Constraints:
- No observer effect: hooks read tensors and never change what the model computes; nothing
  touches an RNG. The only change to the graph is that a module's inputs that require grad are
  handed to it as ``x.view_as(x)`` (same memory, same values), so the gradient that flows through
  *this* module into ``x`` can be observed separately from other uses of ``x``.
- Backward semantics (spec "Calls"): a module call's backward ``begin`` is the event at which the
  gradient with respect to one of its outputs first arrives (a tensor hook on the output); its
  ``end`` the event at which the gradient with respect to its last differentiable input is
  computed (a tensor hook on the input view). ``grad_output`` is the full gradient of the output
  tensor (all its uses); ``grad_input`` is the part that flows through this module call. When a
  module modifies its input in place (``ReLU(inplace=True)``), PyTorch drops hooks on the view; a
  hook on the input tensor itself stands in, giving the gradient of the input's value before the
  modification.
- Devices: statistics are computed where the tensor lives, in float64. CPU tensors are summarised
  immediately; CUDA tensors are copied to pinned host memory with non-blocking copies and their
  statistics stay on the device until the records are written (at the step end or when too many
  wait), so no hook synchronises the device.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import ml_dtypes
import numpy as np
import torch

from tracespec.adapters._common import (
    BackwardCall,
    Recorder,
    RecordOptions,
    Summary,
    flatten,
    map_tensors,
    parse_options,
)
from tracespec.format.stats import TensorStats, compute_stats, content_hash

__all__ = ["FRAMEWORK", "TorchRecorder", "accepts", "record", "tensor_stats"]

FRAMEWORK: Final = "torch"

_DTYPE_NAMES: Final[dict[torch.dtype, str]] = {
    torch.bool: "bool",
    torch.int8: "int8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.uint8: "uint8",
    torch.uint16: "uint16",
    torch.uint32: "uint32",
    torch.uint64: "uint64",
    torch.float16: "float16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.bfloat16: "bfloat16",
    torch.complex64: "complex64",
    torch.complex128: "complex128",
    torch.float8_e4m3fn: "float8_e4m3fn",
    torch.float8_e5m2: "float8_e5m2",
    torch.float8_e4m3fnuz: "float8_e4m3fnuz",
    torch.float8_e5m2fnuz: "float8_e5m2fnuz",
}

# dtypes numpy lacks: viewed as unsigned integers of the same width, then as the ml_dtypes type.
_BIT_VIEWS: Final[dict[torch.dtype, tuple[torch.dtype, Any]]] = {
    torch.bfloat16: (torch.uint16, ml_dtypes.bfloat16),
    torch.float8_e4m3fn: (torch.uint8, ml_dtypes.float8_e4m3fn),
    torch.float8_e5m2: (torch.uint8, ml_dtypes.float8_e5m2),
    torch.float8_e4m3fnuz: (torch.uint8, ml_dtypes.float8_e4m3fnuz),
    torch.float8_e5m2fnuz: (torch.uint8, ml_dtypes.float8_e5m2fnuz),
}

# float64 work buffer per thread: sums run blockwise into it, so no tensor-sized float64 copy is
# ever allocated (allocating and faulting in fresh memory costs more than the arithmetic).
_CPU_BLOCK: Final = 1 << 18
_DEVICE_BLOCK: Final = 1 << 24
# Above this ratio of mean^2 to variance, sum-of-squares loses digits: redo with a shift.
_CANCELLATION_RATIO: Final = 1e4
_local = threading.local()


def accepts(model: Any) -> bool:
    """Whether this adapter records ``model`` (a ``torch.nn.Module``)."""
    return isinstance(model, torch.nn.Module)


def record(model: torch.nn.Module, path: str | os.PathLike[str], **options: Any) -> TorchRecorder:
    """Record ``model``; see :func:`tracespec.record` and ``docs/recording.md``."""
    return TorchRecorder(model, path, parse_options(**options))


# ------------------------------------------------------------------------------ host copies
def numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array sharing the memory of a contiguous CPU tensor, with its true dtype."""
    bits = _BIT_VIEWS.get(tensor.dtype)
    if bits is not None:
        return tensor.view(bits[0]).numpy().view(bits[1])
    return tensor.numpy()


def _host_copy(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A host copy the writer may own; for a device tensor, an in-flight copy and its event."""
    if tensor.device.type == "cpu":
        return tensor.detach().clone(memory_format=torch.contiguous_format), None
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor.detach(), non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


# ------------------------------------------------------------------------------ statistics
def _work_buffer(device: torch.device, size: int) -> torch.Tensor:
    buffers: dict[torch.device, torch.Tensor] = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get(device)
    if buf is None or buf.numel() < size:
        buf = buffers[device] = torch.empty(size, dtype=torch.float64, device=device)
    return buf


def _blockwise_sums(flat: torch.Tensor, shift: float | torch.Tensor = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum(x - shift)`` and ``sum((x - shift)**2)`` in float64, a block at a time."""
    block = _CPU_BLOCK if flat.device.type == "cpu" else _DEVICE_BLOCK
    buf = _work_buffer(flat.device, min(block, flat.numel()))
    total = torch.zeros((), dtype=torch.float64, device=flat.device)
    squares = torch.zeros((), dtype=torch.float64, device=flat.device)
    for start in range(0, flat.numel(), block):
        chunk = flat[start : start + block]
        work = buf[: chunk.numel()]
        work.copy_(chunk)
        if not isinstance(shift, float) or shift:
            work.sub_(shift)
        total += work.sum()
        squares += torch.dot(work, work)
    return total, squares


def _stats_from(count: int, finite: int, total: float, squares: float, low: float, high: float,
                nan: int, inf: int, m2: float | None = None) -> TensorStats:
    if finite == 0:
        return TensorStats(count, None, None, None, None, None, nan, inf)
    mean = total / finite
    if m2 is None:
        m2 = squares - total * mean
    return TensorStats(count, low, high, mean, math.sqrt(max(m2, 0.0) / finite), math.sqrt(squares), nan, inf)


def tensor_stats(tensor: torch.Tensor) -> TensorStats:
    """The statistics of a CPU tensor, equal to :func:`compute_stats` of its values.

    Fast path: min/max in the tensor's dtype, sum and sum of squares in float64 blockwise (two
    passes over the data). Only when the sums are not finite (NaN/Inf present) or the variance
    would lose digits to cancellation does it take a slower exact path.
    """
    flat = tensor.detach().reshape(-1)
    count = flat.numel()
    if count == 0 or flat.dtype in (torch.bool, torch.complex64, torch.complex128) or flat.dtype in _BIT_VIEWS and flat.dtype != torch.bfloat16:
        return compute_stats(numpy_view(flat.contiguous()))
    total_t, squares_t = _blockwise_sums(flat)
    total, squares = float(total_t), float(squares_t)
    if not math.isfinite(total + squares):
        return compute_stats(numpy_view(flat.contiguous()))
    low_t, high_t = torch.aminmax(flat)
    mean = total / count
    m2 = None
    if mean * mean * count > _CANCELLATION_RATIO * max(squares - total * mean, 0.0):
        shifted_total, shifted_squares = _blockwise_sums(flat, mean)
        m2 = float(shifted_squares) - float(shifted_total) ** 2 / count
    return _stats_from(count, count, total, squares, float(low_t), float(high_t), 0, 0, m2)


def device_moments(tensor: torch.Tensor) -> torch.Tensor:
    """The statistics of a tensor as a float64 tensor on its device, without synchronising.

    ``[count, finite, sum, sum of squares, m2, min, max, nan, inf]`` over the finite elements,
    with ``m2`` (squared deviations from the mean) computed in a second pass. Read it with
    :func:`stats_from_moments` once the device is done.
    """
    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(9, dtype=torch.float64, device=flat.device)
    if flat.is_complex():
        flat = flat.abs()
    if not flat.is_floating_point():
        flat = flat.to(torch.float64)
    finite_mask = torch.isfinite(flat)
    finite = finite_mask.sum(dtype=torch.float64)
    nan = torch.isnan(flat).sum(dtype=torch.float64)
    values = torch.where(finite_mask, flat, 0)
    total, squares = _blockwise_sums(values)
    mean = total / finite.clamp(min=1)
    deviations = torch.where(finite_mask, flat.to(torch.float64) - mean, 0)
    m2 = torch.dot(deviations, deviations)
    low = torch.where(finite_mask, flat, math.inf).amin().to(torch.float64)
    high = torch.where(finite_mask, flat, -math.inf).amax().to(torch.float64)
    count = torch.tensor(float(flat.numel()), dtype=torch.float64, device=flat.device)
    return torch.stack([count, finite, total, squares, m2, low, high, nan, count - finite - nan])


def stats_from_moments(moments: list[float]) -> TensorStats:
    """:class:`TensorStats` from the values of :func:`device_moments`."""
    count, finite, total, squares, m2, low, high, nan, inf = moments
    return _stats_from(int(count), int(finite), total, squares, low, high, int(nan), int(inf), m2)


# ------------------------------------------------------------------------------ recorder
@dataclass(slots=True)
class _WrappedInput:
    slot: str
    base: torch.Tensor
    view: torch.Tensor
    version: int
    fallback: Any  # handle of the hook on ``base``, kept only if the module modified the view


@dataclass(slots=True)
class _CallState:
    backward: BackwardCall | None = None
    inputs: list[_WrappedInput] = field(default_factory=list)


class TorchRecorder(Recorder):
    """Records a ``torch.nn.Module`` through forward pre/post hooks and tensor gradient hooks."""

    framework = FRAMEWORK

    def __init__(self, model: torch.nn.Module, path: str | os.PathLike[str], options: RecordOptions) -> None:
        super().__init__(model, path, options)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

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
        return self.model.named_modules()

    def local_tensors(self, module: Any, role: str) -> Iterable[tuple[str, Any]]:
        if role == "parameter":
            return module.named_parameters(recurse=False)
        return module.named_buffers(recurse=False)

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.dtype in _DTYPE_NAMES and value.layout == torch.strided

    def tensor_version(self, tensor: Any) -> int:
        return int(tensor._version)

    def tensor_nbytes(self, tensor: Any) -> int:
        return int(tensor.numel() * tensor.element_size())

    def dedup_key(self, tensor: Any) -> Hashable:
        # Views of the same memory with the same geometry hold the same values: this also
        # catches a gradient handed on as a new tensor object over the same buffer.
        return (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device)

    def parameter_grad(self, parameter: Any) -> Any:
        return parameter.grad

    def optimizer_state(self, optimizer: Any) -> Iterable[tuple[Any, str, Any]]:
        for group in optimizer.param_groups:
            for param in group["params"]:
                for key, value in optimizer.state.get(param, {}).items():
                    yield param, str(key), value

    # ---------------------------------------------------------------- summaries
    def summarize(self, tensor: Any, level: str) -> Summary:
        tensor = tensor.detach()
        summary = Summary(_DTYPE_NAMES[tensor.dtype], tuple(int(d) for d in tensor.shape))
        on_cpu = tensor.device.type == "cpu"
        host: torch.Tensor | None = None
        event = None
        if level == "full":
            host, event = _host_copy(tensor)
        elif level == "hash":
            host, event = (tensor.contiguous(), None) if on_cpu else _host_copy(tensor)
        if on_cpu:
            if level in ("full", "stats"):
                summary.stats = tensor_stats(tensor)
            if host is not None:
                summary.array = numpy_view(host) if level == "full" else None
                summary.hash = content_hash(numpy_view(host))
            return summary
        moments = device_moments(tensor) if level in ("full", "stats") else None

        def finish(s: Summary) -> None:
            if moments is not None:
                s.stats = stats_from_moments(moments.tolist())
            if host is not None:
                assert event is not None
                event.synchronize()
                array = numpy_view(host)
                s.hash = content_hash(array)
                s.array = array if level == "full" else None

        summary.finish = finish
        return summary

    # ---------------------------------------------------------------- hooks
    def install_hooks(self) -> None:
        for node in self._nodes:
            module = node.module
            self._handles.append(module.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post_hook, with_kwargs=True))

    def install_optimizer_hooks(self, optimizer: Any) -> None:
        self._handles.append(optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.before_optimizer_step()))
        self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_optimizer_step(opt)))

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre_hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        fc = self.forward_begin(module, args, kwargs)
        if fc is None or not torch.is_grad_enabled() or not self.wants_backward(fc.node):
            return None
        state = _CallState()
        fc.extra = state

        def wrap(slot: str, tensor: torch.Tensor) -> torch.Tensor:
            if not tensor.requires_grad:
                return tensor
            view = tensor.view_as(tensor)
            state.inputs.append(_WrappedInput(slot, tensor, view, view._version, None))
            return view

        new_args = tuple(map_tensors(a, wrap, str(i), self.is_tensor) for i, a in enumerate(args))
        new_kwargs = {k: map_tensors(v, wrap, str(k), self.is_tensor) for k, v in kwargs.items()}
        if not state.inputs:
            return None
        bc = self.backward_call(fc, len(state.inputs))
        state.backward = bc
        for wrapped in state.inputs:
            wrapped.view.register_hook(self._input_grad_hook(bc, wrapped))
            wrapped.fallback = wrapped.base.register_hook(self._input_grad_hook(bc, wrapped))
        return new_args, new_kwargs

    def _input_grad_hook(self, bc: BackwardCall, wrapped: _WrappedInput) -> Any:
        def hook(grad: torch.Tensor) -> None:
            if wrapped.slot is not None:
                slot, wrapped.slot = wrapped.slot, None  # type: ignore[assignment]
                self.backward_input_grad(bc, slot, grad)

        return hook

    def _post_hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        fc = self.forward_end(module, output)
        if fc is None or not torch.is_grad_enabled() or not self.wants_backward(fc.node):
            return
        state: _CallState | None = fc.extra
        if state is None:
            state = fc.extra = _CallState()
        for wrapped in state.inputs:
            if wrapped.view._version == wrapped.version:
                wrapped.fallback.remove()  # the view's own hook will fire
                wrapped.fallback = None
        outputs = [(slot, t) for slot, t in flatten(output, "", self.is_tensor) if self.is_tensor(t) and t.requires_grad]
        if not outputs:
            return
        bc = state.backward or self.backward_call(fc, 0)
        state.backward = bc
        for slot, tensor in outputs:
            tensor.register_hook(self._output_grad_hook(bc, slot))

    def _output_grad_hook(self, bc: BackwardCall, slot: str) -> Any:
        def hook(grad: torch.Tensor) -> None:
            self.backward_output_grad(bc, slot, grad)

        return hook
