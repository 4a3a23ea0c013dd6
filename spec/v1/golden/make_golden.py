"""Record the golden 1.0 traces with the 1.0 writer (run with the 1.0 code on PYTHONPATH)."""
import sys
from pathlib import Path
import numpy as np
import tracespec
assert tracespec.FORMAT_VERSION == "1.0", tracespec.FORMAT_VERSION
out = Path(sys.argv[1])
rng = np.random.default_rng(0)
w1, b1 = (rng.standard_normal((8, 4)) * 0.5).astype(np.float32), (rng.standard_normal(8) * 0.1).astype(np.float32)
w2, b2 = (rng.standard_normal((3, 8)) * 0.5).astype(np.float32), (rng.standard_normal(3) * 0.1).astype(np.float32)
x = rng.standard_normal((5, 4)).astype(np.float32)

import torch
from torch import nn
torch.manual_seed(0)
tm = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
with torch.no_grad():
    for layer, w, b in ((tm[0], w1, b1), (tm[2], w2, b2)):
        layer.weight.copy_(torch.from_numpy(w)); layer.bias.copy_(torch.from_numpy(b))
opt = torch.optim.SGD(tm.parameters(), lr=0.1)
with tracespec.record(tm, out / "torch_mlp", capture="full", optimizer=opt) as rec:
    for _ in range(1):
        tm(torch.from_numpy(x)).square().mean().backward(); opt.step(); opt.zero_grad(); rec.step()

import paddle
pm = paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.Tanh(), paddle.nn.Linear(8, 3))
for layer, w, b in ((pm[0], w1, b1), (pm[2], w2, b2)):
    layer.weight.set_value(w.T); layer.bias.set_value(b)
popt = paddle.optimizer.SGD(learning_rate=0.1, parameters=pm.parameters())
with tracespec.record(pm, out / "paddle_mlp", capture="full", optimizer=popt) as rec:
    for _ in range(1):
        pm(paddle.to_tensor(x)).square().mean().backward(); popt.step(); popt.clear_grad(); rec.step()

with tracespec.record(tm, out / "torch_mlp_stats", capture="stats") as rec:
    tm(torch.from_numpy(x)).sum().backward(); rec.step()
