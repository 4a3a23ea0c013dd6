"""Checkpoints (safetensors, PyTorch, Paddle) -> traces, and the allennlp-style checkpoint diff.

The PyTorch and Paddle files are written by the real ``torch.save`` and ``paddle.save``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from tracespec import load_trace, validate_trace
from tracespec.cli import cli
from tracespec.convert import convert_checkpoint, diff_checkpoints, open_checkpoint
from tracespec.convert.checkpoint_diff import edit_script, rms_distance
from tracespec.errors import InputFileError, UsageError


def _state_dicts() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A and B: B modifies one tensor, nudges one below the threshold, drops one, adds one,
    reshapes one. A's keys carry the prefix ``model.``."""
    rng = np.random.default_rng(0)
    b = {
        "embed.weight": rng.standard_normal((10, 4)).astype(np.float32),
        "layer.0.weight": rng.standard_normal((4, 4)).astype(np.float32),
        "layer.0.bias": rng.standard_normal(4).astype(np.float32),
        "layer.1.weight": rng.standard_normal((4, 4)).astype(np.float32),
        "layer.1.scale": np.ones(4, np.float32),
        "norm.weight": np.ones(6, np.float32),
        "head.weight": rng.standard_normal((2, 4)).astype(np.float32),
        "head.bias": np.zeros(2, np.float32),
    }
    a = {
        "model.embed.weight": b["embed.weight"],
        "model.layer.0.weight": b["layer.0.weight"],
        "model.layer.0.bias": b["layer.0.bias"],
        "model.layer.1.weight": b["layer.1.weight"] + 0.5,
        "model.layer.1.bias": np.zeros(4, np.float32),
        "model.norm.weight": np.ones(4, np.float32),
        "model.head.weight": b["head.weight"] + np.float32(1e-7),
        "model.head.bias": b["head.bias"],
    }
    return a, b


EXPECTED_SCRIPT = [
    ("keep", "embed.weight"),
    ("keep", "layer.0.weight"),
    ("keep", "layer.0.bias"),
    ("modify", "layer.1.weight"),
    ("delete", "layer.1.bias"),
    ("delete", "norm.weight"),
    ("insert", "layer.1.scale"),
    ("insert", "norm.weight"),
    ("keep", "head.weight"),
    ("keep", "head.bias"),
]


def _save(fmt: str, state: dict[str, np.ndarray], path: Path) -> Path:
    if fmt == "safetensors":
        save_file(dict(state), str(path))
    elif fmt == "pt":
        import torch

        torch.save(OrderedDict((k, torch.from_numpy(v.copy())) for k, v in state.items()), path)
    else:
        import paddle

        paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pdparams"])
def test_edit_script_of_two_checkpoints(fmt: str, tmp_path: Path) -> None:
    a, b = _state_dicts()
    if fmt == "safetensors":  # safetensors keeps no key order: data order is by name
        a = dict(sorted(a.items()))
        b = dict(sorted(b.items()))
    path_a = _save(fmt, a, tmp_path / f"a.{fmt}")
    path_b = _save(fmt, b, tmp_path / f"b.{fmt}")
    diff = diff_checkpoints(path_a, path_b, strip_prefix_a="model.", threshold=1e-5)
    expected = EXPECTED_SCRIPT if fmt != "safetensors" else _sorted_script()
    assert [(s.op, s.key) for s in diff.steps] == expected
    modified = next(s for s in diff.steps if s.op == "modify")
    assert modified.distance == pytest.approx(0.5, rel=1e-6)
    head = next(s for s in diff.steps if s.key == "head.weight")
    assert head.op == "keep" and 0 < head.distance < 1e-5
    lines = list(diff.lines())
    assert "!layer.1.weight, shape = (4, 4), \u25b3 = 0.5000" in lines
    assert "-layer.1.bias, shape = (4,)" in lines
    assert "+layer.1.scale, shape = (4,)" in lines
    assert "-norm.weight, shape = (4,)" in lines and "+norm.weight, shape = (6,)" in lines
    assert lines[-1] == "5 unchanged, 1 modified (\u25b3 > 1e-05), 2 added, 2 removed"
    assert not diff.same


def _sorted_script() -> list[tuple[str, str]]:
    a, b = _state_dicts()
    keys_a = [(k.removeprefix("model."), v.shape) for k, v in sorted(a.items())]
    keys_b = [(k, v.shape) for k, v in sorted(b.items())]
    out = []
    for op, i, j in edit_script(keys_a, keys_b):
        key = keys_b[j][0] if op == "insert" else keys_a[i][0]
        out.append(("modify" if key == "layer.1.weight" and op == "keep" else op, key))
    assert ("delete", "layer.1.bias") in out and ("insert", "layer.1.scale") in out
    return out


def test_threshold_and_scale(tmp_path: Path) -> None:
    a, b = _state_dicts()
    path_a, path_b = _save("safetensors", a, tmp_path / "a.st"), _save("safetensors", b, tmp_path / "b.st")
    scaled = diff_checkpoints(path_a, path_b, strip_prefix_a="model.", threshold=1e-5, scale=1e6)
    head = next(s for s in scaled.steps if s.key == "head.weight")
    difference = a["model.head.weight"].astype(np.float64) - b["head.weight"]
    assert head.op == "modify" and head.distance == pytest.approx(1e6 * np.sqrt(np.mean(difference**2)), rel=1e-12)
    loose = diff_checkpoints(path_a, path_b, strip_prefix_a="model.", threshold=1.0)
    assert next(s for s in loose.steps if s.key == "layer.1.weight").op == "keep"
    same = diff_checkpoints(path_b, path_b)
    assert same.same and all(s.distance == 0 for s in same.steps)


def test_mixed_formats_and_prefix_errors(tmp_path: Path) -> None:
    a, b = _state_dicts()
    path_a = _save("pt", a, tmp_path / "a.pt")
    path_b = _save("safetensors", b, tmp_path / "b.safetensors")
    diff = diff_checkpoints(path_a, path_b, strip_prefix_a="model.")
    assert {s.key for s in diff.steps if s.op == "modify"} == {"layer.1.weight"}
    with pytest.raises(UsageError, match="no key starts with the prefix 'modle.'"):
        diff_checkpoints(path_a, path_b, strip_prefix_a="modle.")
    clash = _save("safetensors", {"x": np.ones(1, np.float32), "p.x": np.ones(1, np.float32)}, tmp_path / "c.st")
    with pytest.raises(UsageError, match="the same key"):
        diff_checkpoints(clash, path_b, strip_prefix_a="p.")


def test_tracespec_diff_on_checkpoint_files(tmp_path: Path) -> None:
    a, b = _state_dicts()
    path_a = _save("pt", a, tmp_path / "a.pt")  # registration order
    path_b = _save("safetensors", b, tmp_path / "b.safetensors")  # sorted by name
    runner = CliRunner()
    result = runner.invoke(cli, ["diff", str(path_a), str(path_b), "--strip-prefix-a", "model."])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    # keys present on both sides are compared even though the two orders differ
    assert sorted(line for line in lines if line[:1] in "-+!") == sorted(
        [
            "!layer.1.weight, shape = (4, 4), \u25b3 = 0.5000",
            "-layer.1.bias, shape = (4,)",
            "-norm.weight, shape = (4,)",
            "+layer.1.scale, shape = (4,)",
            "+norm.weight, shape = (6,)",
        ]
    )
    assert lines[-1] == "5 unchanged, 1 modified (\u25b3 > 1e-05), 2 added, 2 removed"
    shown = runner.invoke(cli, ["diff", str(path_b), str(path_b), "--show-unchanged", "--scale", "10"])
    assert shown.exit_code == 0 and " embed.weight, shape = (10, 4), \u25b3 = 0.0000" in shown.output
    as_json = runner.invoke(
        cli, ["diff", str(path_a), str(path_b), "--strip-prefix-a", "model.", "--json", "-", "--threshold", "0.6"]
    )
    assert as_json.exit_code == 1
    doc = json.loads(as_json.stdout)
    assert doc["counts"] == {"keep": 6, "modify": 0, "insert": 2, "delete": 2} and doc["threshold"] == 0.6
    misuse = runner.invoke(cli, ["diff", str(tmp_path), str(tmp_path), "--threshold", "1"])
    assert misuse.exit_code == 2 and "only for checkpoint files" in misuse.output
    typo = runner.invoke(cli, ["diff", str(path_a), str(path_b), "--strip-prefix-a", "modle."])
    assert typo.exit_code == 2 and "no key starts with the prefix" in typo.output
    calls: list[tuple[int, int]] = []
    diff_checkpoints(path_a, path_b, strip_prefix_a="model.", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]


def test_nan_and_dtype_changes_count_as_modified(tmp_path: Path) -> None:
    both = np.array([np.nan, 2, np.inf], np.float32)  # the same NaN and Inf on both sides
    base = {"w": np.ones(3, np.float32), "v": np.ones(3, np.float32), "x": both}
    path_a = _save("safetensors", base, tmp_path / "a.st")
    changed = {"w": np.array([1, np.nan, 1], np.float32), "v": np.ones(3, ml_dtypes.bfloat16), "x": both.copy()}
    path_b = _save("safetensors", changed, tmp_path / "b.st")
    diff = diff_checkpoints(path_a, path_b)
    assert [(s.op, s.key) for s in diff.steps] == [("modify", "v"), ("modify", "w"), ("keep", "x")]
    assert math.isnan(diff.steps[1].distance or 0.0) and diff.steps[0].distance == 0.0 and diff.steps[2].distance == 0.0
    assert "dtype float32 -> bfloat16" in diff.steps[0].line()


def test_rms_distance_is_size_normalised() -> None:
    a = np.zeros(1_000_003, np.float32)
    b = np.full(1_000_003, 2.0, np.float32)
    assert rms_distance(a, b) == pytest.approx(2.0)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert rms_distance(a, b, pool) == pytest.approx(2.0)
    c = np.array([1 + 1j, 0], np.complex64)
    assert rms_distance(c, np.zeros(2, np.complex64)) == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=14), st.lists(st.sampled_from("abcde"), max_size=14))
def test_edit_script_is_a_shortest_script(a: list[str], b: list[str]) -> None:
    script = edit_script(a, b)
    rebuilt, next_a, next_b = [], 0, 0
    for op, i, j in script:
        if op == "keep":
            assert (i, j) == (next_a, next_b) and a[i] == b[j]
            rebuilt.append(a[i])
            next_a, next_b = next_a + 1, next_b + 1
        elif op == "delete":
            assert i == next_a
            next_a += 1
        else:
            assert j == next_b
            rebuilt.append(b[j])
            next_b += 1
    assert rebuilt == b and next_a == len(a)
    assert sum(op == "keep" for op, _, _ in script) == _lcs(a, b)


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) - 1, -1, -1):
        for j in range(len(b) - 1, -1, -1):
            table[i][j] = table[i + 1][j + 1] + 1 if a[i] == b[j] else max(table[i + 1][j], table[i][j + 1])
    return table[0][0]


# --------------------------------------------------------------------------- conversion


def test_torch_checkpoint_converts_exactly(tmp_path: Path) -> None:
    import torch

    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = OrderedDict(
        [
            ("encoder.layer.0.weight", weight),
            ("encoder.layer.0.weight_t", weight.t()),  # a non-contiguous view of the same storage
            ("encoder.layer.0.bias", torch.tensor([1.5, -2.0, 0.25], dtype=torch.bfloat16)),
            ("encoder.norm.num_batches_tracked", torch.tensor(7)),
            ("head.weight", torch.ones(2, 3, dtype=torch.float16)),
        ]
    )
    state["head.tied"] = state["head.weight"]  # tied weights: one storage, two names
    torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pt")
    result = CliRunner().invoke(cli, ["convert", "checkpoint", str(tmp_path / "ckpt.pt"), str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "6 tensors" in result.output and "1 non-tensor values" in result.output
    assert validate_trace(tmp_path / "t", deep=True).complete
    trace = load_trace(tmp_path / "t")
    assert trace.manifest.framework == "torch" and trace.manifest.source["format"] == "torch"
    nodes = {n["node"]: n for n in trace.nodes().to_pylist()}
    assert [n["route"] for n in nodes.values()] == [
        "",
        "model",
        "model.encoder",
        "model.encoder.layer",
        "model.encoder.layer.0",
        "model.encoder.norm",
        "model.head",
    ]
    got = {}
    for r in trace.tensors().to_pylist():
        key = f"{nodes[r['node']]['route']}.{r['slot']}".lstrip(".")
        got[key] = trace.read(0, r["array"]) if r["array"] else r["value"]
        assert (r["role"], r["stage"], r["step"], r["call"]) == ("parameter", "forward", 0, None)
    assert got["epoch"] == "3"
    stored = trace.parts[0].manifest.store_arrays
    assert stored == 5  # the tied weight is recorded with same_as, its bytes written once
    for key, tensor in state.items():
        expected = tensor.view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        value = got[f"model.{key}"]
        np.testing.assert_array_equal(value.view(np.int16) if tensor.dtype == torch.bfloat16 else value, expected)
        assert value.shape == tuple(tensor.shape)


def test_paddle_checkpoint_converts_with_bfloat16(tmp_path: Path) -> None:
    import paddle

    layer = paddle.nn.Linear(300, 200)  # 240 KB: its bytes are skipped while unpickling, then mapped
    paddle.save(layer.state_dict(), str(tmp_path / "fp32.pdparams"))
    layer.to(dtype="bfloat16")
    paddle.save(layer.state_dict(), str(tmp_path / "bf16.pdparams"))
    checkpoint = open_checkpoint(tmp_path / "bf16.pdparams")
    assert [(e.key, e.dtype, e.shape) for e in checkpoint.entries] == [
        ("weight", "bfloat16", (300, 200)),
        ("bias", "bfloat16", (200,)),
    ]
    bits = paddle.load(str(tmp_path / "bf16.pdparams"), return_numpy=True)["weight"]
    np.testing.assert_array_equal(checkpoint.read("weight").view(np.uint16), bits)
    convert_checkpoint(tmp_path / "fp32.pdparams", tmp_path / "t", durable=False)
    trace = load_trace(tmp_path / "t")
    (weight,) = [r for r in trace.tensors().to_pylist() if r["slot"] == "weight"]
    np.testing.assert_array_equal(trace.read(0, weight["array"]), paddle.load(str(tmp_path / "fp32.pdparams"))["weight"].numpy())
    diff = diff_checkpoints(tmp_path / "fp32.pdparams", tmp_path / "bf16.pdparams")
    assert [(s.op, s.key) for s in diff.steps] == [("modify", "weight"), ("modify", "bias")]  # new dtype
    assert 0 < (diff.steps[0].distance or 0) < 1e-2 and diff.steps[1].distance == 0  # bias is zero


# --------------------------------------------------------------------------- hostile files


class _Payload:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"with open({self.path!r}, 'w') as f: f.write('ran')",))


@pytest.mark.parametrize("fmt", ["pt", "pdparams"])
def test_malicious_pickle_is_refused_and_never_runs(fmt: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil.{fmt}"
    if fmt == "pt":
        import torch

        torch.save({"w": torch.ones(2), "evil": _Payload(marker)}, path)
    else:
        import paddle

        paddle.save({"w": paddle.ones([2]), "evil": _Payload(marker)}, str(path))
    assert b"exec" in (zipfile.ZipFile(path).read("evil/data.pkl") if fmt == "pt" else path.read_bytes())
    for args in (["convert", "checkpoint", str(path), str(tmp_path / "t")], ["diff", str(path), str(path)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 3, result.output
        assert "refuses to load global" in result.output and ".exec: only tensors" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(InputFileError):
        diff_checkpoints(path, path)
    assert not marker.exists()
    # Control: the payload is live; an unrestricted load runs it.
    if fmt == "pt":
        import torch

        torch.load(path, weights_only=False)
    else:
        import pickle

        with open(path, "rb") as f:
            pickle.load(f)  # what paddle.load does underneath
    assert marker.read_text() == "ran"


def test_damaged_files_are_one_line_errors(tmp_path: Path) -> None:
    a, _ = _state_dicts()
    good = _save("safetensors", a, tmp_path / "good.st").read_bytes()
    cases = {
        "truncated.safetensors": good[: len(good) - 10],
        "garbage.bin": b"\x00" * 64,
        "header.safetensors": (100).to_bytes(8, "little") + b"{" * 100 + b"\0" * 8,
        "notpt.pt": _zip({"x/other.txt": b"hi"}),
        "badstorage.pt": _zip({"x/data.pkl": _torch_pickle("../../etc/passwd"), "x/byteorder": b"little"}),
        "truncated.pdparams": b"\x80\x04\x95",
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        result = CliRunner().invoke(cli, ["convert", "checkpoint", str(tmp_path / name), str(tmp_path / f"out_{name}")])
        assert result.exit_code == 3, (name, result.output)
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output


def _zip(members: dict[str, bytes]) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _torch_pickle(storage_key: str) -> bytes:
    import pickle

    class Storage:
        def __reduce__(self) -> tuple[Any, ...]:
            return (str, ("x",))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return ("storage", "float32", storage_key, "cpu", 4) if isinstance(obj, Storage) else None

    import io

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": Storage()})
    return buffer.getvalue()


def test_core_never_imports_a_framework() -> None:
    code = "import sys, tracespec.convert, tracespec.cli; print(sorted({'torch', 'paddle', 'onnxruntime'} & set(sys.modules)))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


_DTYPES = ["float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool"]


@st.composite
def _state(draw: st.DrawFn) -> dict[str, np.ndarray]:
    keys = draw(st.lists(st.from_regex(r"[a-z]{1,3}(\.[a-z0-9]{1,3}){0,2}", fullmatch=True), min_size=1, max_size=5, unique=True))
    out = {}
    for key in keys:
        dtype = np.dtype(ml_dtypes.bfloat16) if (name := draw(st.sampled_from(_DTYPES))) == "bfloat16" else np.dtype(name)
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize))
        data = np.frombuffer(raw, np.uint8)
        out[key] = np.asarray(data % 2 == 1).reshape(shape) if dtype == np.bool_ else data.view(dtype).reshape(shape)
    return out


@settings(max_examples=40, deadline=None)
@given(_state())
def test_safetensors_read_back_bit_for_bit(tmp_path_factory: pytest.TempPathFactory, state: dict[str, np.ndarray]) -> None:
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    save_file({k: v.copy(order="C") for k, v in state.items()}, str(path))
    checkpoint = open_checkpoint(path)
    assert sorted(e.key for e in checkpoint.entries) == sorted(state)
    for entry, array in checkpoint.iter_tensors():
        expected = state[entry.key]
        assert array.dtype == expected.dtype and array.shape == expected.shape
        assert array.tobytes() == expected.tobytes()
    assert diff_checkpoints(path, path).same


def test_an_absurd_shape_is_refused_before_any_allocation(tmp_path: Path) -> None:
    import torch

    # 2^42 elements viewing a one-element storage (stride 0): 16 TiB if materialised
    torch.save({"w": torch.zeros(1).expand(1 << 21, 1 << 21)}, tmp_path / "expand.pt")
    result = CliRunner().invoke(cli, ["diff", str(tmp_path / "expand.pt"), str(tmp_path / "expand.pt")])
    assert result.exit_code == 3 and "absurd shape" in result.output


@pytest.mark.parametrize("command", [["convert"], ["convert", "padiff"], ["convert", "checkpoint"], ["diff"]])
def test_help_teaches_with_examples(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and "tracespec" in result.output
    if command == ["diff"]:
        assert "--strip-prefix-a" in result.output and "checkpoint files" in result.output
