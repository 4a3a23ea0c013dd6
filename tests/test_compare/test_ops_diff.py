"""Diagnosis inside modules: nanoGPT (vendored, its attention is functional code in a module)
recorded with ``ops=True``, against itself with a one-line bug and against a Paddle port.

The culprit is the op, with the module whose forward calls it and the line of code, on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tracespec
from tracespec.cli import cli
from tracespec.storage import TraceWriter

from .nanogpt import bugs
from .nanogpt.model import GPT, GPTConfig

NANOGPT = Path(__file__).parent / "nanogpt"
CONFIG = GPTConfig(block_size=16, vocab_size=64, n_layer=3, n_head=2, n_embd=16, dropout=0.0)


def line_in(path: Path, marker: str) -> int:
    found = [i for i, text in enumerate(path.read_text().splitlines(), start=1) if marker in text]
    assert len(found) == 1, (path, marker, found)
    return found[0]


def nanogpt() -> GPT:
    """nanoGPT with its manual attention (what it runs where torch lacks scaled_dot_product_attention)."""
    torch.manual_seed(0)
    model = GPT(CONFIG)
    for block in model.transformer.h:
        block.attn.flash = False
        mask = torch.tril(torch.ones(CONFIG.block_size, CONFIG.block_size))
        block.attn.register_buffer("bias", mask.view(1, 1, CONFIG.block_size, CONFIG.block_size))
    return model


def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.integers(0, CONFIG.vocab_size, (2, 8)), rng.integers(0, CONFIG.vocab_size, (2, 8))


def record_torch(path: Path, bug: Callable[..., Any] | None = None) -> Path:
    model = nanogpt()
    if bug is not None:
        bugs.install(model.transformer.h[1].attn, bug)
    idx, targets = (torch.from_numpy(a) for a in batch())
    with tracespec.record(model, path, ops=True) as rec:
        _, loss = model(idx, targets)
        loss.backward()
        rec.step()
    return path


def record_paddle(path: Path, scale_bug_in: int | None = None) -> Path:
    import paddle

    from .nanogpt.paddle_port import GPT as PaddleGPT
    from .nanogpt.paddle_port import load_torch_weights

    model = PaddleGPT(CONFIG, scale_bug_in=scale_bug_in)
    load_torch_weights(model, {k: v.detach().numpy() for k, v in nanogpt().state_dict().items()})
    idx, targets = (paddle.to_tensor(a) for a in batch())
    with tracespec.record(model, path, ops=True) as rec:
        _, loss = model(idx, targets)
        loss.backward()
        rec.step()
    return path


def diff(a: Path, b: Path, *options: str) -> tuple[int, dict[str, Any], str]:
    result = CliRunner().invoke(cli, ["diff", str(a), str(b), "--json", str(a.parent / "v.json"), "--no-progress", *options])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads((a.parent / "v.json").read_text()), result.output


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_torch(tmp_path_factory.mktemp("nanogpt") / "torch")


def test_a_correct_paddle_port_passes_with_ops_on_both_sides(reference: Path, tmp_path: Path) -> None:
    code, verdict, _ = diff(reference, record_paddle(tmp_path / "paddle"))
    assert code == 0 and verdict["status"] == "pass", verdict["first_divergence"]
    calls = verdict["coverage"]["ranks"]["0"]["calls"]
    assert calls["fraction_a"] >= 0.95 and calls["fraction_b"] >= 0.95
    pairs = {(n["a"]["route"], n["b"]["route"]) for n in verdict["nodes"] if n["stage"] == "forward"}
    # nanoGPT views K before Q, the port reshapes Q first: the ops pair by what they compute
    assert ("transformer.h.0.attn.view#0", "transformer.h.0.attn.reshape#1") in pairs  # keys
    assert ("transformer.h.0.attn.view#1", "transformer.h.0.attn.reshape#0") in pairs  # queries
    assert ("transformer.h.0.attn.masked_fill#0", "transformer.h.0.attn.where#0") in pairs
    assert ("lm_head", "matmul#0") in pairs  # the tied head: a Linear against a matmul
    # nanoGPT's contiguous() copies what the transpose before it gave: one group, compared at its boundary
    groups = [
        (n["a"]["routes"], n["b"]["routes"], n["alignment"])
        for n in verdict["nodes"]
        if n["stage"] == "forward" and "routes" in n["a"]
    ]
    assert (
        ["transformer.h.0.attn.transpose#4", "transformer.h.0.attn.contiguous#0"],
        ["transformer.h.0.attn.transpose#3"],
        "fused",
    ) in groups
    # what one side computes and the other does not: nanoGPT's transpose of K (the port's
    # matmul transposes); the port's full_like for the masked value
    unmatched = {(u["side"], u["route"].rsplit(".", 1)[-1]) for u in verdict["unmatched"]}
    assert unmatched == {("a", "transpose#3"), ("b", "full_like#0")}


def test_attention_scale_bug_is_named_at_the_op_and_its_line(reference: Path, tmp_path: Path) -> None:
    code, verdict, output = diff(reference, record_torch(tmp_path / "bug", bugs.scale_bug))
    first = verdict["first_divergence"]
    assert code == 1 and (first["stage"], first["kind"]) == ("forward", "introduced")
    assert first["a"]["route"] == first["b"]["route"] == "transformer.h.1.attn.mul#0"
    site_a, site_b = first["a"]["op_site"], first["b"]["op_site"]
    assert site_a["module"] == "transformer.h.1.attn" and site_a["op"] == "torch.Tensor.mul"
    model_line = line_in(NANOGPT / "model.py", "att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))")
    assert (site_a["source"]["file"], site_a["source"]["line"]) == (str(NANOGPT / "model.py"), model_line)
    assert (site_b["source"]["file"], site_b["source"]["line"]) == (
        str(NANOGPT / "bugs.py"),
        line_in(NANOGPT / "bugs.py", "the bug: not math.sqrt"),
    )
    assert f"transformer.h.1.attn → mul at model.py:{model_line} (transformer.h.1.attn.mul#0) INTRODUCED it" in output
    assert f"code in B: {NANOGPT / 'bugs.py'}:" in output


def test_mask_bug_is_named_at_the_op_and_its_line(reference: Path, tmp_path: Path) -> None:
    code, verdict, _output = diff(reference, record_torch(tmp_path / "bug", bugs.mask_bug))
    first = verdict["first_divergence"]
    assert code == 1 and first["kind"] == "introduced"
    assert first["a"]["route"] == "transformer.h.1.attn.getitem#0"  # the mask's slice of the causal buffer
    line = line_in(NANOGPT / "model.py", "att = att.masked_fill(self.bias[:,:,:T,:T] == 0, float('-inf'))")
    assert first["a"]["op_site"]["source"]["line"] == line
    assert first["b"]["op_site"]["source"]["line"] == line_in(NANOGPT / "bugs.py", "the bug: 1 : T + 1")
    assert "getitem in the forward of transformer.h.1.attn computes differently" in verdict["hint"]


def test_paddle_port_with_a_scale_bug_is_named_at_its_line(reference: Path, tmp_path: Path) -> None:
    code, verdict, _output = diff(reference, record_paddle(tmp_path / "paddle", scale_bug_in=1))
    first = verdict["first_divergence"]
    assert code == 1 and first["kind"] == "introduced"
    assert first["a"]["route"] == "transformer.h.1.attn.mul#0"
    port = NANOGPT / "paddle_port.py"
    assert first["b"]["op_site"] == {
        "module": "transformer.h.1.attn",
        "op": "paddle.Tensor.__mul__",
        "source": {
            "file": str(port),
            "line": line_in(port, "att = paddle.matmul(q, k, transpose_y=True) * scale"),
            "function": "forward",
        },
    }
    html = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["diff", str(reference), str(tmp_path / "paddle"), "--html", str(html), "--no-progress"])
    assert result.exit_code == 1
    page = html.read_text()
    assert "op called by" in page and f"{port}:" in page


def test_a_malformed_source_location_is_a_bad_trace(reference: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad"
    with TraceWriter(path, framework="torch") as w:
        root = w.add_node("", "GPT")
        op = w.add_node(
            "mul#0", "mul", parent=root, kind="op", attrs={"op": "torch.mul", "source": {"file": "m.py", "line": "77"}}
        )
        w.add_call(step=0, stage="forward", node=op, call=0, begin=0, end=1)
        w.end_step(0)
    result = CliRunner().invoke(cli, ["diff", str(reference), str(path), "--no-progress"])
    assert result.exit_code == 3
    assert "attrs.source must be" in result.output and "Traceback" not in result.output
