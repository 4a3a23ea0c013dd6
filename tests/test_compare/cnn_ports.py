"""A small residual CNN with batch norm, and ports of it that do not share its module tree.

- :func:`flat_port`: what converters generate (X2Paddle, onnx2torch): one flat module, layers named
  after their op and numbered (``conv2d3``, ``batchnorm3``, ``relu5``), a ReLU module per call where
  the original shares one, and the final Linear as a functional ``matmul`` + ``add``;
- :func:`record_onnx_export`: the model exported by either exporter at its defaults (batch norms
  folded into the convolutions in eval mode) and run in ONNX Runtime.

The real tools' output is tested in ``test_real_ports.py``; these are small and fast, for the
mechanisms.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

import tracespec

INPUT_SHAPE = (2, 3, 16, 16)


class Block(nn.Module):
    """torchvision's BasicBlock, small: one ReLU module called twice."""

    def __init__(self, channels: int, downsample: bool = False) -> None:
        super().__init__()
        inputs = channels // 2 if downsample else channels
        self.conv1 = nn.Conv2d(inputs, channels, 3, 2 if downsample else 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = (
            nn.Sequential(nn.Conv2d(inputs, channels, 1, 2, bias=False), nn.BatchNorm2d(channels)) if downsample else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(Block(8), Block(8))
        self.layer2 = nn.Sequential(Block(16, downsample=True), Block(16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def reference() -> Net:
    """The model in eval mode, its batch norms' running statistics made non-trivial by training steps."""
    torch.manual_seed(0)
    net = Net()
    for _ in range(3):
        net(torch.randn(4, *INPUT_SHAPE[1:]))
    return net.eval()


class FlatPort(nn.Module):
    """The same computation as generated code writes it (see the module docstring)."""

    def __init__(self, net: Net) -> None:
        super().__init__()
        layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        counts = {"conv2d": 0, "batchnorm": 0}
        for layer in layers:
            kind = "conv2d" if isinstance(layer, nn.Conv2d) else "batchnorm"
            setattr(self, f"{kind}{counts[kind]}", copy.deepcopy(layer))
            counts[kind] += 1
        for i in range(17):
            setattr(self, f"relu{i}", nn.ReLU())
        self.pool2d0 = nn.MaxPool2d(2)
        self.pool2d1 = nn.AdaptiveAvgPool2d(1)
        self.fc_weight = nn.Parameter(net.fc.weight.detach().t().clone())
        self.fc_bias = nn.Parameter(net.fc.bias.detach().clone())

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        relus = iter(range(17))

        def relu(x: torch.Tensor) -> torch.Tensor:
            return getattr(self, f"relu{next(relus)}")(x)

        def block(x: torch.Tensor, first: int, downsample: int | None = None) -> torch.Tensor:
            out = relu(getattr(self, f"batchnorm{first}")(getattr(self, f"conv2d{first}")(x)))
            out = getattr(self, f"batchnorm{first + 1}")(getattr(self, f"conv2d{first + 1}")(out))
            if downsample is not None:
                x = getattr(self, f"batchnorm{downsample}")(getattr(self, f"conv2d{downsample}")(x))
            return relu(out + x)

        x1 = self.pool2d0(relu(self.batchnorm0(self.conv2d0(x0))))
        x2 = block(block(x1, 1), 3)
        x3 = block(block(x2, 5, downsample=7), 8)
        x4 = torch.flatten(self.pool2d1(x3), 1)
        return torch.matmul(x4, self.fc_weight) + self.fc_bias


def flat_port(net: Net, bug: str | None = None) -> FlatPort:
    """The flat port of ``net``; ``bug``: ``eps`` (batchnorm5's epsilon 1e-5 -> 1e-2) or ``weight``
    (conv2d3's weight 1% larger)."""
    port = FlatPort(net).eval()
    if bug == "eps":
        port.batchnorm5.eps = 1e-2
    elif bug == "weight":
        with torch.no_grad():
            port.conv2d3.weight.mul_(1.01)
    return port


def inputs() -> torch.Tensor:
    return torch.randn(*INPUT_SHAPE, generator=torch.Generator().manual_seed(1))


def record(model: nn.Module, path: Path) -> Path:
    """One step, forward and backward of a simple loss, full capture."""
    with tracespec.record(model, path, capture="full") as rec:
        model(inputs()).square().mean().backward()
        rec.step()
    return path


def record_onnx_export(net: Net, path: Path, dynamo: bool = False) -> Path:
    """``net`` exported with the exporter's defaults, the TorchScript one (``dynamo=False``) or the
    torch.export-based one, run in ONNX Runtime."""
    onnx_file = path.with_suffix(".onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecation notes (the legacy one is used on purpose)
        torch.onnx.export(net, (inputs(),), onnx_file, input_names=["x"], dynamo=dynamo)
    tracespec.record_onnx(onnx_file, {"x": inputs().numpy()}, path, capture="full")
    return path
