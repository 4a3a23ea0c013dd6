"""The recorder of frameworks observed through hooks: module forward hooks and tensor gradient
hooks (``register_hook(fn)``, which returns a handle with ``remove()``). PyTorch and Paddle are
recorded the same way, here, over a few framework primitives (see :class:`HookedRecorder`).

Constraints:
- No observer effect: the only change to the graph is that a call's inputs that need a gradient
  are handed to it as identity views (same memory, same values), so that the gradient flowing
  through *this* call into an input can be observed apart from other uses of the input.
- Backward semantics (spec "Calls"): a call's backward ``begin`` is the event at which the
  gradient with respect to one of its outputs first arrives (a hook on the output, which sees the
  full gradient of the output, all its uses: ``grad_output``); its ``end`` the event at which the
  gradient with respect to its last differentiable input is computed (a hook on the input's view:
  ``grad_input``, the part that flows through this call).
- A hook never holds the tensor it sits on: that would make a reference cycle through autograd
  that Python's collector cannot see, and every step's inputs would stay in memory for good.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tracespec.adapters._common import BackwardCall, OpDescription, Recorder, _ForwardCall, calling_frame
from tracespec.adapters._host import HostBufferPool
from tracespec.adapters._options import RecordOptions
from tracespec.adapters._slots import flatten, map_tensors

__all__ = ["HookedRecorder"]

ForwardPreHook = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]
ForwardPostHook = Callable[[Any, tuple[Any, ...], dict[str, Any], Any], None]


@dataclass(slots=True)
class _InputSlot:
    """What the gradient hooks of one input share: its slot, taken by the first to fire (the
    view's, or the fallback on the input itself). It holds no tensor (see the module's docstring)."""

    slot: str | None


@dataclass(slots=True)
class _WrappedInput:
    slot: _InputSlot
    base: Any
    view: Any
    version: int  # the view's version when handed to the call
    fallback: Any  # handle of the hook on ``base``, kept only if the call modified the view in place


@dataclass(slots=True)
class _CallState:
    """What a call's gradient hooks need, kept in ``_ForwardCall.extra`` from its begin to its end."""

    backward: BackwardCall | None = None
    inputs: list[_WrappedInput] = field(default_factory=list)


class HookedRecorder(Recorder):
    """A :class:`Recorder` fed by module forward pre/post hooks and tensor gradient hooks; a
    framework implements the primitives below besides what every :class:`Recorder` needs."""

    #: Whether an input whose view the call modified in place is observed through a hook on the
    #: input itself (PyTorch drops the hooks of a view modified in place; Paddle keeps them).
    hooks_input_bases: ClassVar[bool] = False

    def __init__(self, model: Any, path: str | os.PathLike[str], options: RecordOptions) -> None:
        super().__init__(model, path, options)
        self._handles: list[Any] = []  # what the hooks' registrations returned, each with remove()
        self._host_buffers = HostBufferPool()

    # ---------------------------------------------------------------- framework primitives
    @abstractmethod
    def hook_forward(self, module: Any, pre_hook: ForwardPreHook, post_hook: ForwardPostHook) -> list[Any]:
        """Register ``pre_hook(module, args, kwargs)`` (it may return new ``(args, kwargs)``) and
        ``post_hook(module, args, kwargs, output)`` on ``module``; their removable handles."""

    @abstractmethod
    def grad_enabled(self) -> bool:
        """Whether autograd records the operations run now (not inside the framework's no_grad)."""

    @abstractmethod
    def requires_grad(self, tensor: Any) -> bool:
        """Whether a gradient will flow into ``tensor``."""

    @abstractmethod
    def identity_view(self, tensor: Any) -> Any:
        """A view of ``tensor`` (same memory, same values, same version counter) that autograd
        treats as a tensor of its own, whose backward hands the gradient on unchanged."""

    def parameter_grad(self, parameter: Any) -> Any:
        return parameter.grad

    # ---------------------------------------------------------------- hooks
    def install_hooks(self) -> None:
        for node in self._nodes:
            hooks = self.forward_hooks(node)
            if hooks is not None:
                self._handles.extend(self.hook_forward(node.module, *hooks))

    def forward_hooks(self, node: Any) -> tuple[ForwardPreHook, ForwardPostHook] | None:
        """The forward hooks of a node's module (None: not hooked)."""
        return self._pre_hook, self._post_hook

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._host_buffers.clear()

    def _pre_hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.settle()
        forward_call = self.forward_begin(module, args, kwargs)
        return None if forward_call is None else self.watch_inputs(forward_call, args, kwargs)

    def _post_hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        self.settle()
        forward_call = self.forward_end(module, output)
        if forward_call is not None:
            self.watch_outputs(forward_call, output)

    #: The framework's package folder: ops its own code calls are not recorded (see calling_frame).
    framework_dir: ClassVar[str] = ""
    #: Files of the framework that only hand a function to the adapter's interception point.
    dispatch_files: ClassVar[frozenset[str]] = frozenset()

    def call_op(self, func: Callable[..., Any], op: OpDescription | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``func`` (described by ``op``, None when it is not an op) for the adapter's
        interception point; record it when the forward code of a module called it directly."""
        caller = self.op_caller()
        frame = calling_frame(self.framework_dir, self.dispatch_files) if caller is not None and op is not None else None
        if frame is None:
            return func(*args, **kwargs)
        assert caller is not None and op is not None
        name, in_place, qualified = op
        source = (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
        forward_call = self.op_begin(caller, name, qualified, source, args, kwargs)
        if in_place or kwargs.get("inplace") is True or kwargs.get("out") is not None:
            # The inputs were recorded before the op changed them. A view handed in place of the
            # changed tensor would make autograd rebase it: no gradient is observed through it.
            output = func(*args, **kwargs)
            if output is None and args:
                output = args[0]  # x[i] = v returns nothing: its result is x
        else:
            watched = self.watch_inputs(forward_call, args, kwargs)
            output = func(*watched[0], **watched[1]) if watched is not None else func(*args, **kwargs)
        self.op_end(forward_call, output)
        self.watch_outputs(forward_call, output)
        return output

    def observes_backward(self, forward_call: _ForwardCall) -> bool:
        """Whether the call's gradients are observed: autograd is on and they are recorded."""
        return self.grad_enabled() and self.wants_backward(forward_call.node)

    def watch_inputs(
        self, forward_call: _ForwardCall, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Hand the call views of its inputs that need a gradient, with hooks that observe the
        gradient flowing through this call; the new arguments, or None to keep them."""
        if not self.observes_backward(forward_call):
            return None
        state = forward_call.extra = _CallState()

        def wrap(slot: str, tensor: Any) -> Any:
            if not self.requires_grad(tensor):
                return tensor
            view = self.identity_view(tensor)
            state.inputs.append(_WrappedInput(_InputSlot(slot), tensor, view, self.tensor_version(view), None))
            return view

        new_args = tuple(map_tensors(a, wrap, str(i), self.is_tensor) for i, a in enumerate(args))
        new_kwargs = {k: map_tensors(v, wrap, str(k), self.is_tensor) for k, v in kwargs.items()}
        if not state.inputs:
            return None
        backward_call = state.backward = self.backward_call(forward_call, len(state.inputs))
        for wrapped in state.inputs:
            wrapped.view.register_hook(self._input_grad_hook(backward_call, wrapped.slot))
            if self.hooks_input_bases:
                wrapped.fallback = wrapped.base.register_hook(self._input_grad_hook(backward_call, wrapped.slot))
        return new_args, new_kwargs

    def watch_outputs(self, forward_call: _ForwardCall, output: Any) -> None:
        """Hook the call's outputs that need a gradient (its backward begins at the first)."""
        if not self.observes_backward(forward_call):
            return
        state: _CallState | None = forward_call.extra
        if state is None:
            state = forward_call.extra = _CallState()
        for wrapped in state.inputs:
            if wrapped.fallback is not None and self.tensor_version(wrapped.view) == wrapped.version:
                wrapped.fallback.remove()  # the view's own hook will fire
                wrapped.fallback = None
        outputs = [(slot, t) for slot, t in flatten(output, "", self.is_tensor) if self.is_tensor(t) and self.requires_grad(t)]
        if not outputs:
            return
        backward_call = state.backward = state.backward or self.backward_call(forward_call, 0)
        for slot, tensor in outputs:
            tensor.register_hook(self._output_grad_hook(backward_call, slot))

    def _input_grad_hook(self, backward_call: BackwardCall, pending: _InputSlot) -> Callable[[Any], None]:
        def hook(grad: Any) -> None:
            self.settle()
            if pending.slot is not None:
                slot, pending.slot = pending.slot, None
                self.backward_input_grad(backward_call, slot, grad)

        return hook

    def _output_grad_hook(self, backward_call: BackwardCall, slot: str) -> Callable[[Any], None]:
        def hook(grad: Any) -> None:
            self.settle()
            self.backward_output_grad(backward_call, slot, grad)

        return hook
