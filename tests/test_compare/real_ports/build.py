"""Record the reference runs and their real ports, each made by another project's tool at its defaults.

One call of :func:`record_reference` records the PyTorch reference of an architecture; one call of
:func:`record_port` generates a port with its tool (X2Paddle, onnx2torch, the ONNX exporters, or
Paddle's own model zoo), loads the reference's weights into it, optionally carries one injected
bug, and records it. Nothing generated is kept in the repository: every port is generated into
the folder it is recorded in.

Every run is one step in eval mode (batch norms use their running statistics), forward and, where
the runtime has one (PyTorch, Paddle), the backward of ``sum of squares`` of the outputs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

import tracespec
from test_compare.real_ports import models

SEED: Final = 0
NUM_CLASSES: Final = 10
IMAGE_SHAPE: Final = (2, 3, 64, 64)
BERT_CONFIG: Final = {
    "vocab_size": 100,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 32,
    "type_vocab_size": 2,
}
TOKENS: Final = np.array([[2, 15, 33, 47, 8, 91, 3, 0], [2, 7, 64, 12, 3, 0, 0, 0]], dtype=np.int64)

PORTS: Final = ("x2paddle", "onnx2torch", "ort_torchscript", "ort_dynamo", "paddle_zoo", "paddle_port")
PADDLE_BERT: Final = Path(__file__).resolve().parents[3] / "examples" / "bert" / "paddle_bert.py"

BUG_ROUTES: Final = {
    "bn_epsilon": "layer2.0.bn2",  # eps 1e-5 -> 1e-3
    "conv_weight": "layer3.1.conv1",  # weight x 1.01
    "pool_mode": "maxpool",  # MaxPool2d(3, 2, 1) -> AvgPool2d(3, 2, 1)
    "pool_ceil_mode": "maxpool",  # ceil_mode False -> True (its output grows from 16x16 to 17x17)
}
"""Each injected bug of the ResNet-18 ports and the route of the reference module it changes."""

ONNX2TORCH_OPSET: Final = 17
BUGGY_EPSILON: Final = 1e-3
WEIGHT_FACTOR: Final = 1.01


def _cnn(architecture: str) -> nn.Module:
    """The vendored torchvision CNN with non-trivial batch-norm statistics and affine parameters.

    A few training-mode forwards move the running means and variances away from 0 and 1, and the
    affine parameters are drawn at random, so that an epsilon or a scale bug shows in eval mode.
    """
    model = (
        models.resnet18(num_classes=NUM_CLASSES)
        if architecture == "resnet18"
        else models.mobilenet_v2(num_classes=NUM_CLASSES, width_mult=0.5)
    )
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
        model.train()
        for _ in range(3):
            model(torch.randn(IMAGE_SHAPE, generator=generator) * 2 + 0.5)
    return model.eval()


def _bert() -> nn.Module:
    """Hugging Face's ``BertModel``, randomly initialised from a small config (eager attention)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(**BERT_CONFIG, attn_implementation="eager")
    return BertModel(config).eval()


def reference_model(architecture: str) -> nn.Module:
    """The PyTorch reference of ``architecture``, with fixed seeds: the same weights on every call."""
    torch.manual_seed(SEED)
    return _bert() if architecture == "bert" else _cnn(architecture)


def example_inputs(architecture: str) -> dict[str, np.ndarray]:
    """The inputs of one forward, named as the reference's ``forward`` parameters (and the ONNX graph's inputs)."""
    if architecture == "bert":
        return {"input_ids": TOKENS, "attention_mask": (TOKENS != 0).astype(np.int64)}
    return {"x": np.random.default_rng(SEED).standard_normal(IMAGE_SHAPE).astype(np.float32)}


def _outputs(result: Any) -> list[Any]:
    """The output tensors of a forward: a tensor, a tuple, or a Hugging Face output (a dict)."""
    if isinstance(result, dict):
        return list(result.values())
    if isinstance(result, (tuple, list)):
        return list(result)
    return [result]


def _record_module(model: Any, inputs: dict[str, Any], path: Path) -> Path:
    """Record one eval-mode step of a torch module or paddle layer: forward, then backward of the squares."""
    with tracespec.record(model, path, capture="full", durable=False) as rec:
        loss = sum(output.pow(2).mean() for output in _outputs(model(*inputs.values())))
        loss.backward()
        rec.step()
    return path


def _torch_inputs(architecture: str) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(value) for name, value in example_inputs(architecture).items()}


def record_reference(architecture: str, path: Path) -> Path:
    """Record the PyTorch reference of ``architecture`` (run A of every comparison)."""
    return _record_module(reference_model(architecture), _torch_inputs(architecture), path)


def _inject_torch_bug(buggy: nn.Module, bug: str) -> None:
    """Put ``bug`` into the model a tool is about to convert: the tool carries it into its output."""
    route = BUG_ROUTES[bug]
    if bug == "bn_epsilon":
        buggy.get_submodule(route).eps = BUGGY_EPSILON
    elif bug == "conv_weight":
        with torch.no_grad():
            buggy.get_submodule(route).weight.mul_(WEIGHT_FACTOR)
    elif bug == "pool_mode":
        pool = buggy.get_submodule(route)
        setattr(buggy, route, nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding))
    else:
        buggy.get_submodule(route).ceil_mode = True


@contextlib.contextmanager
def _exporter_warnings_silenced() -> Iterator[None]:
    """The exporters' own notices, which the test run (warnings are errors) must not turn into failures."""
    with warnings.catch_warnings():
        # torch.export's pytree and the TorchScript exporter announce their own deprecations
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        yield


def export_onnx(model: nn.Module, architecture: str, onnx_file: Path, dynamo: bool, **options: Any) -> Path:
    """Export with ``torch.onnx.export`` at its defaults but for the exporter (``dynamo=`` its default True)."""
    inputs = _torch_inputs(architecture)
    with _exporter_warnings_silenced(), contextlib.redirect_stdout(sys.stderr):
        # by keyword: Hugging Face's forward takes more positional parameters than the inputs given
        torch.onnx.export(model, (), str(onnx_file), kwargs=inputs, input_names=list(inputs), dynamo=dynamo, **options)
    return onnx_file


def _x2paddle(model: nn.Module, architecture: str, folder: Path) -> Any:
    """Convert with X2Paddle's ``pytorch2paddle`` (jit trace, its default) and load the generated Layer."""
    import paddle
    from x2paddle.convert import pytorch2paddle

    save_dir = folder / "x2paddle"
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        # X2Paddle 1.6.0 converts by torch.jit.trace (and trace_method), which torch 2.13 deprecates
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated", category=DeprecationWarning)
        pytorch2paddle(model, save_dir=str(save_dir), jit_type="trace", input_examples=list(_torch_inputs(architecture).values()))
    spec = importlib.util.spec_from_file_location(f"x2paddle_{folder.name}", save_dir / "x2paddle_code.py")
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)
    layer = getattr(generated, type(model).__name__)()
    # model.pdparams is the file X2Paddle wrote just now from our own weights
    layer.set_dict(paddle.load(str(save_dir / "model.pdparams")))
    return layer.eval()


@contextlib.contextmanager
def _torchvision_unavailable_for_onnx2torch() -> Iterator[None]:
    """Let ``import onnx2torch`` succeed without torchvision, whose ops no converted graph here uses.

    onnx2torch imports ``torchvision.ops`` at import time for its NMS and RoIAlign converters only.
    torchvision's PyPI wheels are CUDA builds that cannot load against this CPU torch (and an
    installed broken torchvision breaks ``transformers``), so it is not installed. During the import
    a stand-in module is registered whose ops raise: a graph with NMS or RoIAlign would fail
    loudly, nothing is emulated. It is removed again so that nothing else sees it.
    """
    if importlib.util.find_spec("torchvision") is not None or "onnx2torch" in sys.modules:
        yield
        return

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision is not installed: onnx2torch's NMS/RoIAlign converters are unavailable")

    torchvision = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = unavailable  # type: ignore[attr-defined]
    torchvision.ops = ops  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": torchvision, "torchvision.ops": ops})
    try:
        yield
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]


def _onnx2torch(onnx_file: Path) -> nn.Module:
    """Convert the exported ONNX file back to a torch ``fx.GraphModule`` with onnx2torch's ``convert``."""
    with _torchvision_unavailable_for_onnx2torch():
        from onnx2torch import convert
    return convert(str(onnx_file)).eval()


def _copy_to_paddle(model: nn.Module, layer: Any) -> None:
    """Copy ``model``'s state into a Paddle Layer of the same structure, tensor by tensor in order.

    Paddle's zoo names differ (``_mean``/``_variance`` for running statistics) and it has no
    ``num_batches_tracked``; its Linear weights are ``[in, out]``.
    """
    import paddle

    source = [(name, value) for name, value in model.state_dict().items() if not name.endswith("num_batches_tracked")]
    target = layer.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{len(source)} torch tensors against {len(target)} paddle tensors")
    linear_weights = {f"{route}.weight" for route, sub in layer.named_sublayers() if isinstance(sub, paddle.nn.Linear)}
    state = {}
    for (torch_name, value), (paddle_name, slot) in zip(source, target.items()):
        array = value.numpy()
        if paddle_name in linear_weights:
            array = array.T
        if tuple(array.shape) != tuple(slot.shape):
            raise RuntimeError(f"{torch_name} {array.shape} does not fit {paddle_name} {slot.shape}")
        state[paddle_name] = paddle.to_tensor(np.ascontiguousarray(array))
    layer.set_state_dict(state)


def _paddle_zoo(model: nn.Module, architecture: str, bug: str | None) -> Any:
    """Paddle's own implementation (``paddle.vision.models``) with the reference's weights, and ``bug``."""
    import paddle

    builders: dict[str, Callable[[], Any]] = {
        "resnet18": lambda: paddle.vision.models.resnet18(num_classes=NUM_CLASSES),
        "mobilenet_v2": lambda: paddle.vision.models.mobilenet_v2(num_classes=NUM_CLASSES, scale=0.5),
    }
    layer = builders[architecture]()
    _copy_to_paddle(model, layer)
    if bug is not None:
        route = BUG_ROUTES[bug]
        target = dict(layer.named_sublayers())[route]
        if bug == "bn_epsilon":
            target._epsilon = BUGGY_EPSILON
        elif bug == "conv_weight":
            target.weight.set_value(target.weight.numpy() * WEIGHT_FACTOR)
        elif bug == "pool_mode":
            setattr(layer, route, paddle.nn.AvgPool2D(target.ksize, target.stride, target.padding))
        else:
            target.ceil_mode = True
    return layer.eval()


def _paddle_bert(model: nn.Module) -> Any:
    """The repository's hand-written Paddle port of BERT (examples/bert) with the reference's weights."""
    spec = importlib.util.spec_from_file_location("paddle_bert", PADDLE_BERT)
    paddle_bert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paddle_bert)
    weights = {name: value.numpy() for name, value in model.state_dict().items()}
    return paddle_bert.load_paddle_bert(model.config.to_dict(), weights)


def _paddle_inputs(architecture: str) -> dict[str, Any]:
    import paddle

    return {name: paddle.to_tensor(value) for name, value in example_inputs(architecture).items()}


def record_port(architecture: str, port: str, folder: Path, bug: str | None = None) -> Path:
    """Generate ``port`` of ``architecture`` (with ``bug`` injected) in ``folder`` and record it to ``folder/trace``."""
    if port not in PORTS:
        raise ValueError(f"unknown port {port!r}; choose one of {PORTS}")
    folder.mkdir(parents=True, exist_ok=True)
    trace = folder / "trace"
    model = reference_model(architecture)
    if port == "paddle_zoo":
        return _record_module(_paddle_zoo(model, architecture, bug), _paddle_inputs(architecture), trace)
    if port == "paddle_port":
        return _record_module(_paddle_bert(model), _paddle_inputs(architecture), trace)
    if bug is not None:
        _inject_torch_bug(model, bug)
    if port == "x2paddle":
        return _record_module(_x2paddle(model, architecture, folder), _paddle_inputs(architecture), trace)
    if port == "onnx2torch":
        # onnx2torch 1.5.15 converts opsets up to 17: neither exporter's default file converts
        # (ReduceMean-18 from dynamo; Constant-19 and AveragePool-19 from TorchScript at its default
        # opset), so it gets the TorchScript exporter's file at opset 17
        onnx_file = export_onnx(model, architecture, folder / "model.onnx", dynamo=False, opset_version=ONNX2TORCH_OPSET)
        return _record_module(_onnx2torch(onnx_file), _torch_inputs(architecture), trace)
    onnx_file = export_onnx(model, architecture, folder / "model.onnx", dynamo=port == "ort_dynamo")
    tracespec.record_onnx(onnx_file, example_inputs(architecture), trace, capture="full", durable=False)
    return trace
