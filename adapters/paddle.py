"""Record PaddlePaddle runs (``tracespec.record(paddle_layer, path)``).

The same options and the same semantics as the PyTorch adapter (``docs/recording.md``); the
Paddle specifics are in ``docs/paddle.md``.

Constraints:
- No observer effect: hooks read tensors and never change what the model computes; nothing
  draws from an RNG. Layers are observed as :class:`HookedRecorder` says (``adapters/_hooked.py``;
  Paddle has no module-level backward hook, only ``Tensor.register_hook``); their inputs that need
  a gradient are handed to them as ``x.view(x.shape)``, whose backward is a reshape of the
  gradient: no arithmetic, so every gradient stays bit-identical. A layer that modifies its input
  view in place still reports the gradient with respect to the value it received.
- Values keep their true dtype: ``Tensor.numpy()`` returns bfloat16 as raw ``uint16`` and float8
  as ``int8``; those bits are reinterpreted as ``ml_dtypes`` types, never converted.
- Parameters keep Paddle's layout (``Linear.weight`` is ``[in, out]``); the node's class name
  and the parameter's local name let ``diff`` apply layout rules.
- Devices: statistics and hashes are computed on the host from a zero-copy view of a CPU tensor,
  in the hook, before the model can modify it; only ``full`` copies the data. A tensor on another
  device is first copied to the host (a blocking ``Tensor.cpu()``): the device path is this one
  line, shared with the CPU path.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final

import numpy as np
import paddle
import paddle.distributed
from paddle.jit.dy2static.program_translator import ProgramTranslator, StaticFunction

from tracespec.adapters._common import OpDescription, Summary, op_name
from tracespec.adapters._hooked import ForwardPostHook, ForwardPreHook, HookedRecorder
from tracespec.adapters._host import summarize_host
from tracespec.adapters._options import RecordOptions, parse_options
from tracespec.errors import UsageError
from tracespec.format.dtypes import DTYPES

__all__ = ["FRAMEWORK", "OP_FUNCTIONS", "PaddleRecorder", "accepts", "host_array", "record"]

FRAMEWORK: Final = "paddle"

# Paddle's wider unsigned types are left out: ``astype("uint16")`` makes a bfloat16 tensor.
_DTYPE_NAMES: Final[dict[Any, str]] = {
    getattr(paddle, name): name for name in DTYPES if hasattr(paddle, name) and name not in ("uint16", "uint32", "uint64")
}

OP_FUNCTIONS: Final[dict[str, tuple[str, ...]]] = {
    "paddle": (
        "matmul",
        "bmm",
        "mm",
        "einsum",
        "outer",
        "add",
        "subtract",
        "multiply",
        "divide",
        "floor_divide",
        "remainder",
        "pow",
        "square",
        "sqrt",
        "rsqrt",
        "exp",
        "log",
        "erf",
        "sin",
        "cos",
        "tanh",
        "sigmoid",
        "abs",
        "neg",
        "sign",
        "scale",
        "maximum",
        "minimum",
        "clip",
        "where",
        "masked_fill",
        "masked_select",
        "equal",
        "not_equal",
        "greater_than",
        "less_than",
        "logical_not",
        "bitwise_and",
        "transpose",
        "reshape",
        "flatten",
        "squeeze",
        "unsqueeze",
        "expand",
        "tile",
        "roll",
        "concat",
        "stack",
        "split",
        "chunk",
        "slice",
        "gather",
        "index_select",
        "tril",
        "triu",
        "cast",
        "mean",
        "sum",
        "max",
        "min",
        "amax",
        "amin",
        "var",
        "std",
        "norm",
        "cumsum",
        "logsumexp",
        "topk",
        "argmax",
        "softmax",
        "arange",
        "full_like",
        "zeros_like",
        "ones_like",
    ),
    "paddle.nn.functional": (
        "linear",
        "embedding",
        "conv2d",
        "scaled_dot_product_attention",
        "softmax",
        "log_softmax",
        "gelu",
        "relu",
        "leaky_relu",
        "silu",
        "sigmoid",
        "tanh",
        "softplus",
        "mish",
        "hardswish",
        "glu",
        "swiglu",
        "dropout",
        "layer_norm",
        "rms_norm",
        "batch_norm",
        "normalize",
        "pad",
        "interpolate",
        "avg_pool2d",
        "max_pool2d",
        "adaptive_avg_pool2d",
        "one_hot",
        "cross_entropy",
    ),
    "paddle.Tensor": (
        "__add__",
        "__radd__",
        "__sub__",
        "__rsub__",
        "__mul__",
        "__rmul__",
        "__truediv__",
        "__rtruediv__",
        "__floordiv__",
        "__mod__",
        "__pow__",
        "__rpow__",
        "__matmul__",
        "__rmatmul__",
        "__neg__",
        "__abs__",
        "__invert__",
        "__and__",
        "__or__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__eq__",
        "__ne__",
        "__getitem__",
        "__setitem__",
        "matmul",
        "add",
        "subtract",
        "multiply",
        "divide",
        "pow",
        "square",
        "sqrt",
        "rsqrt",
        "exp",
        "log",
        "tanh",
        "sigmoid",
        "abs",
        "scale",
        "clip",
        "where",
        "masked_fill",
        "transpose",
        "reshape",
        "flatten",
        "squeeze",
        "unsqueeze",
        "expand",
        "tile",
        "split",
        "chunk",
        "unbind",
        "gather",
        "index_select",
        "astype",
        "cast",
        "mean",
        "sum",
        "max",
        "min",
        "var",
        "std",
        "norm",
        "cumsum",
        "topk",
        "argmax",
        "softmax",
        "t",
        "T",
        "mT",
        "contiguous",
        "clone",
        "add_",
        "subtract_",
        "multiply_",
        "scale_",
        "clip_",
        "exp_",
        "sqrt_",
        "zero_",
        "fill_",
        "masked_fill_",
        "reshape_",
        "unsqueeze_",
        "squeeze_",
    ),
}
"""The public functions and tensor methods recorded as ops (option ``ops``). Paddle has no
interception point for every API call: these are wrapped while recording, where forward code
finds them (``paddle.matmul``, ``F.softmax``, ``x @ y``, ``x.transpose(...)``), and restored after;
a function imported by name before recording (``from paddle import matmul``) is not seen."""

_PADDLE_DIR: Final = os.path.dirname(paddle.__file__) + os.sep


def accepts(model: Any) -> bool:
    """Whether this adapter records ``model`` (a ``paddle.nn.Layer``)."""
    return isinstance(model, paddle.nn.Layer)


def record(model: paddle.nn.Layer, path: str | os.PathLike[str], **options: Any) -> PaddleRecorder:
    """Record ``model``; see :func:`tracespec.record`, ``docs/recording.md`` and ``docs/paddle.md``."""
    return PaddleRecorder(model, path, parse_options(**options))


def _refuse_static(model: paddle.nn.Layer) -> None:
    """Refuse, before anything is written, a layer converted with ``paddle.jit.to_static``: its
    forward runs as a static program that calls no forward hook (and Paddle's SOT translator fails
    on the hooks), so nothing inside it could be recorded. With ``paddle.jit.enable_to_static(False)``
    such a layer runs eagerly, and is recorded."""
    if not ProgramTranslator().enable_to_static:
        return
    for route, layer in model.named_sublayers(include_self=True):
        if isinstance(getattr(layer, "forward", None), StaticFunction):
            where = f"its layer {route!r}" if route else "it"
            raise UsageError(
                f"tracespec.record: {where} is converted with paddle.jit.to_static, which runs a static "
                "program that calls no forward hooks; record the layer before to_static, or run it eagerly "
                "while recording with paddle.jit.enable_to_static(False)"
            )


# ------------------------------------------------------------------------------ host arrays
def host_array(tensor: paddle.Tensor) -> np.ndarray:
    """The values of ``tensor`` as a numpy array with its true dtype.

    For a CPU tensor of a dtype numpy knows, the array shares the tensor's memory (DLPack, no
    copy); bfloat16 and float8 come through ``Tensor.numpy()`` (a copy of the raw bits) and are
    reinterpreted, bit for bit, as ``ml_dtypes`` types. Other devices are copied to the host.
    """
    tensor = tensor.detach()
    if not tensor.place.is_cpu_place():
        tensor = tensor.cpu()
    dtype = DTYPES[_DTYPE_NAMES[tensor.dtype]]
    if dtype.stored_as_bits:  # numpy lacks it: Tensor.numpy() hands back its bits as integers
        return tensor.numpy().view(dtype.numpy)
    return np.from_dlpack(tensor)


def inspect_attr(owner: Any, name: str) -> Any:
    """``owner.name`` as stored (a property object, not its value), from the class or its bases."""
    for holder in owner.__mro__ if isinstance(owner, type) else (owner,):
        if name in vars(holder):
            return vars(holder)[name]
    return None


def _device_name(place: Any) -> str:
    """``"cpu"``, ``"cuda:N"`` for an NVIDIA GPU (as PyTorch names it), else Paddle's name."""
    if place.is_cpu_place():
        return "cpu"
    if place.is_gpu_place():
        return f"cuda:{place.gpu_device_id()}"
    text = str(place)
    return text[len("Place(") : -1] if text.startswith("Place(") else text


# ------------------------------------------------------------------------------ recorder
class PaddleRecorder(HookedRecorder):
    """Records a ``paddle.nn.Layer`` through forward pre/post hooks and tensor gradient hooks."""

    framework = FRAMEWORK
    framework_dir = _PADDLE_DIR

    def __init__(self, model: paddle.nn.Layer, path: str | os.PathLike[str], options: RecordOptions) -> None:
        _refuse_static(model)
        super().__init__(model, path, options)
        # Functions and optimizer methods replaced while recording: (owner, name, what its own
        # dict held), restored by remove_hooks().
        self._patched: list[tuple[Any, str, Any]] = []

    # ---------------------------------------------------------------- description
    def framework_version(self) -> str:
        return str(paddle.version.full_version)

    def device_name(self) -> str:
        first = next(iter(self.model.parameters()), None)
        if first is not None:
            return _device_name(first.place)
        name = str(paddle.device.get_device())  # "cpu", "gpu:0", "xpu:0"...
        return name.replace("gpu:", "cuda:", 1)

    def distributed(self) -> tuple[int, int] | None:
        # get_world_size/get_rank read the launcher's environment even before
        # init_parallel_env(), so every process of a launched job writes its own part.
        world_size = paddle.distributed.get_world_size()
        if world_size > 1:
            return paddle.distributed.get_rank(), world_size
        return None

    def named_modules(self) -> Iterable[tuple[str, Any]]:
        named: Iterable[tuple[str, Any]] = self.model.named_sublayers(include_self=True)
        return named

    def local_tensors(self, module: Any, role: str) -> Iterable[tuple[str, Any]]:
        named: Iterable[tuple[str, Any]] = (
            module.named_parameters(include_sublayers=False)
            if role == "parameter"
            else module.named_buffers(include_sublayers=False)
        )
        return named

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, paddle.Tensor) and value.dtype in _DTYPE_NAMES

    def tensor_version(self, tensor: Any) -> int:
        return int(tensor.inplace_version)

    def tensor_nbytes(self, tensor: Any) -> int:
        return math.prod(int(n) for n in tensor.shape) * int(tensor.element_size())

    # Paddle sums a gradient's contributions into the first one's buffer in place, with no
    # version bump: a layer's grad_input then shares a data pointer with a sublayer's partial one.
    dedups_gradients = False

    def dedup_key(self, tensor: Any) -> Hashable:
        # Views of the same memory with the same geometry hold the same values (a Paddle view
        # shares its base's version counter, so an in-place change through either is seen):
        # this catches a layer's input view, which is the previous layer's output.
        return (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.strides), tensor.dtype)

    def optimizer_state(self, optimizer: Any) -> Iterable[tuple[Any, str, Any]]:
        # Paddle keys its optimizer state by parameter *name* (``linear_0.w_0``): map it back.
        by_name = {p.name: p for p in self.model.parameters()}
        for key, per_param in getattr(optimizer, "_accumulators", {}).items():
            for name, value in per_param.items():
                if name in by_name:
                    yield by_name[name], str(key), value
        for name, value in getattr(optimizer, "_master_weights", {}).items():
            if name in by_name:
                yield by_name[name], "master_weight", value

    # ---------------------------------------------------------------- summaries
    def summarize(self, tensor: Any, level: str) -> Summary:
        values = host_array(tensor)
        name = _DTYPE_NAMES[tensor.dtype]
        summary = Summary(name, tuple(int(d) for d in tensor.shape))
        # Everything is computed now, from memory the model cannot change during the hook, in one
        # pass over it: the copy the writer keeps, the statistics and the hash (summarize_host).
        copy_to = None
        if level == "full":
            # The bit-type and device paths already made a private host copy; keep it.
            private = DTYPES[name].stored_as_bits or not tensor.place.is_cpu_place()
            if private and values.flags.c_contiguous:
                summary.array = values
            else:
                copy_to = summary.array = self._host_buffers.take(values.nbytes).view(values.dtype).reshape(values.shape)
        summary.stats, summary.hash = summarize_host(values, stats=level != "hash", digest=level != "stats", copy_to=copy_to)
        return summary

    # ---------------------------------------------------------------- hooks
    def install_hooks(self) -> None:
        super().install_hooks()
        if self.options.ops is not None:
            self._wrap_ops()

    def hook_forward(self, module: Any, pre_hook: ForwardPreHook, post_hook: ForwardPostHook) -> list[Any]:
        return [
            module.register_forward_pre_hook(pre_hook, with_kwargs=True),
            module.register_forward_post_hook(post_hook, with_kwargs=True),
        ]

    def grad_enabled(self) -> bool:
        return bool(paddle.is_grad_enabled())

    def requires_grad(self, tensor: Any) -> bool:
        return not tensor.stop_gradient

    def identity_view(self, tensor: Any) -> Any:
        # A Paddle view shares its base's version counter, and keeps its hooks when modified in place.
        return tensor.view(tensor.shape)

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        """Set ``owner.name`` to ``value`` until remove_hooks()."""
        self._patched.append((owner, name, vars(owner).get(name)))
        setattr(owner, name, value)

    def _wrap_ops(self) -> None:
        """Put a recording wrapper in place of each function of :data:`OP_FUNCTIONS`."""
        owners = {"paddle": paddle, "paddle.nn.functional": paddle.nn.functional, "paddle.Tensor": paddle.Tensor}
        for owner_name, names in OP_FUNCTIONS.items():
            owner = owners[owner_name]
            for name in names:
                original = inspect_attr(owner, name)
                if original is None:
                    continue  # not in this Paddle version
                op: OpDescription = (*op_name(name), f"{owner_name}.{name}")
                if isinstance(original, property) and original.fget is not None:
                    wrapper: Any = property(self._op_wrapper(original.fget, op))
                else:
                    wrapper = self._op_wrapper(original, op)
                self._patch(owner, name, wrapper)

    def _op_wrapper(self, original: Callable[..., Any], op: OpDescription) -> Callable[..., Any]:
        @functools.wraps(original)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            return self.call_op(original, op, args, kwargs)

        return recorded

    def install_optimizer_hooks(self, optimizer: Any) -> None:
        # Paddle optimizers have no step hooks: the instance's ``step`` and ``minimize`` (what
        # paddle.Model calls) are wrapped (instance attributes over the class methods), and
        # restored by remove_hooks(). Recording the gradients and the update is idempotent within
        # a step, so a ``minimize`` that calls ``step`` records them once.
        for name in ("step", "minimize"):
            if not callable(getattr(optimizer, name, None)):
                continue
            self._patch(optimizer, name, self._optimizer_wrapper(optimizer, getattr(optimizer, name)))

    def _optimizer_wrapper(self, optimizer: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        def update(*args: Any, **kwargs: Any) -> Any:
            self.before_optimizer_step()
            result = original(*args, **kwargs)
            self.after_optimizer_step(optimizer)
            return result

        return update

    def remove_hooks(self) -> None:
        super().remove_hooks()
        for owner, name, own in reversed(self._patched):
            if own is None:
                delattr(owner, name)  # it was inherited (from a base class)
            else:
                setattr(owner, name, own)
        self._patched.clear()
