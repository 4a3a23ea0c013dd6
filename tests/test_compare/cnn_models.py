"""A small CNN in PyTorch and its PaddlePaddle port (same weights), whose ReLUs see inputs within
rounding of 0: the two frameworks' convolutions round differently there, so the ReLU masks of the
backward pass differ at a few elements (kink flips) although both runs are correct.

Switches make the port wrong on purpose: ``wrong_relu_backward`` (a ReLU whose backward lets 1% of
the gradient through where the input is negative) and ``ceil_mode`` (a max pool that rounds its
output size up).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHANNELS, CLASSES = 8, 4


def weights_and_input(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Weights in the common [out, in, kh, kw] layout, and an input whose channel 1 is channel 0
    negated (times 1 + one rounding) on the top half: there, conv1's two weight halves cancel and
    its outputs are rounding noise around 0, of either sign."""
    rng = np.random.default_rng(seed)
    conv1 = (rng.standard_normal((CHANNELS, 2, 3, 3)) * 0.4).astype(np.float32)
    conv1[:, 1] = conv1[:, 0]
    w = {
        "conv1.weight": conv1,
        "conv1.bias": np.zeros(CHANNELS, np.float32),
        "conv2.weight": (rng.standard_normal((CHANNELS, CHANNELS, 3, 3)) * 0.2).astype(np.float32),
        "conv2.bias": (rng.standard_normal(CHANNELS) * 0.1).astype(np.float32),
        "fc.weight": (rng.standard_normal((CLASSES, CHANNELS)) * 0.5).astype(np.float32),
        "fc.bias": np.zeros(CLASSES, np.float32),
    }
    x = rng.standard_normal((4, 2, 15, 15)).astype(np.float32)
    ulp = np.spacing(np.abs(x[:, 0, :8])) * rng.choice([-1, 0, 1], x[:, 0, :8].shape)
    x[:, 1, :8] = -(x[:, 0, :8] + ulp)
    return w, x


LABELS = np.array([0, 1, 2, 3], dtype=np.int64)


def record_torch(path: Path, ceil_mode: bool = False, capture: str = "full") -> Path:
    import torch
    import torch.nn.functional as F
    from torch import nn

    import tracespec

    w, x = weights_and_input()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(2, CHANNELS, 3, padding=1)
            self.relu1 = nn.ReLU()
            self.pool = nn.MaxPool2d(2, ceil_mode=ceil_mode)
            self.conv2 = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
            self.relu2 = nn.ReLU()
            self.fc = nn.Linear(CHANNELS, CLASSES)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            h = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(t)))))
            return self.fc(h.mean((2, 3)))

    net = Net()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(w[name]))
    inputs = torch.from_numpy(x).requires_grad_()
    with tracespec.record(net, path, capture=capture, durable=False) as rec:
        F.cross_entropy(net(inputs), torch.from_numpy(LABELS)).backward()
        rec.step()
    return path


def record_paddle(path: Path, wrong_relu_backward: bool = False, capture: str = "full") -> Path:
    import paddle
    import paddle.nn.functional as F
    from paddle import nn
    from paddle.autograd import PyLayer

    import tracespec

    w, x = weights_and_input()

    class LeakyBackward(PyLayer):
        @staticmethod
        def forward(ctx, t):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(t)
            return F.relu(t)

        @staticmethod
        def backward(ctx, grad):  # type: ignore[no-untyped-def]
            (t,) = ctx.saved_tensor()
            return grad * paddle.where(t > 0, paddle.ones_like(t), paddle.full_like(t, 0.01))

    class ReLU(nn.Layer):
        """A port's own ReLU layer, with a wrong backward."""

        def forward(self, t: paddle.Tensor) -> paddle.Tensor:
            return LeakyBackward.apply(t)

    class Net(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2D(2, CHANNELS, 3, padding=1)
            self.relu1 = ReLU() if wrong_relu_backward else nn.ReLU()
            self.pool = nn.MaxPool2D(2)
            self.conv2 = nn.Conv2D(CHANNELS, CHANNELS, 3, padding=1)
            self.relu2 = nn.ReLU()
            self.fc = nn.Linear(CHANNELS, CLASSES)

        def forward(self, t: paddle.Tensor) -> paddle.Tensor:
            h = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(t)))))
            return self.fc(h.mean((2, 3)))

    net = Net()
    for name, p in net.named_parameters():
        p.set_value(w[name].T.copy() if name == "fc.weight" else w[name])
    inputs = paddle.to_tensor(x, stop_gradient=False)
    with tracespec.record(net, path, capture=capture, durable=False) as rec:
        F.cross_entropy(net(inputs), paddle.to_tensor(LABELS)).backward()
        rec.step()
    return path
