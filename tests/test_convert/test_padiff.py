"""PaDiff dumps -> traces, on PaDiff's own dumps (the corpus) and on variants of them.

The variants rewrite real corpus dumps into the other layouts and generations of FORMAT.md
(v0 dict trees and string paths, several forward roots, several ranks, PaDiffGuard v3 with
``init_weights/``), and into hostile dumps.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner
from padiff_corpus import corpus_dir, model_dumps

from tracespec import load_trace, validate_trace
from tracespec.cli import cli
from tracespec.convert import convert_padiff as convert_durably
from tracespec.convert.padiff import locate_padiff_dumps
from tracespec.errors import InputFileError


def convert_padiff(dump: Path, out: Path | str, **options: Any) -> Any:
    """Tests skip fsync: conversions are small, and the machine is shared."""
    return convert_durably(dump, out, durable=False, **options)


def _referenced_existing(dump: Path) -> int:
    """How many .npy files the dump's JSON files name and that exist: what must be converted.

    PaDiff reuses weights/ and grads/: with weights.json next to params.json, params.json's
    weights were overwritten (not converted); with grads.json, its grads are the same files.
    """
    count = 0
    for d in locate_padiff_dumps(dump)[1]:
        present = {name for name in ("report.json", "params.json", "weights.json", "grads.json") if (d.path / name).is_file()}
        for name in present:
            doc = json.loads((d.path / name).read_text())
            stack = doc["tree"] if isinstance(doc["tree"], list) else [doc["tree"]]
            while stack:
                node = stack.pop()
                stack.extend(node.get("children") or [])
                items = [
                    (e["path"] if isinstance(e, dict) else e, "tensors")
                    for e in (node.get("fwd_outputs") or []) + (node.get("bwd_grads") or [])
                ]
                if node.get("available", True):
                    if not (name == "params.json" and "weights.json" in present):
                        items += [(p, "weights") for p in (node.get("weights") or {}).values()]
                    if not (name == "params.json" and "grads.json" in present):
                        items += [(p, "grads") for p in (node.get("grads") or {}).values() if p is not None]
                count += sum((d.path / sub / PurePosixPath(p).name).is_file() for p, sub in items)
    return count


@pytest.mark.parametrize("dump", model_dumps(), ids=lambda p: "/".join(p.parts[-3:]))
def test_every_corpus_dump_converts_and_validates(dump: Path, tmp_path: Path) -> None:
    corpus_dir()
    result = convert_padiff(dump, tmp_path / "trace")
    report = validate_trace(tmp_path / "trace", deep=True)
    assert report.complete
    assert report.records == result.records == _referenced_existing(dump)
    source = load_trace(tmp_path / "trace").manifest.source
    assert source is not None and source["kind"] == "padiff"
    assert source["model_name"] == dump.name
    meta = json.loads(next(dump.rglob("*.json")).read_text())
    assert load_trace(tmp_path / "trace").manifest.framework == meta["framework"]
    assert all(f["file_path"].startswith("/home/alice/") for f in source["files"])


def _records(trace_path: Path) -> tuple[Any, dict[tuple[Any, ...], dict[str, Any]]]:
    trace = load_trace(trace_path)
    nodes = {n["node"]: n for n in trace.nodes().to_pylist()}
    out = {}
    for r in trace.tensors().to_pylist():
        node = nodes[r["node"]]
        r["route"], r["class_name"], r["kind"] = node["route"], node["class_name"], node["kind"]
        out[(r["step"], r["stage"], r["route"], r["role"], r["slot"], r["call"])] = r
    return trace, out


IDENTICAL = [
    ("a_mlp_identical", "torch_mlp", "paddle_mlp", []),
    ("b_block_identical", "torch_block", "paddle_block", []),
    # API nodes: torch permutes q/k/v and transposes k while paddle transposes q/k/v and uses
    # matmul(transpose_y): the ops align by what they compute, torch's extra transpose unmatched.
    ("b_block_identical_apicheck", "torch_block", "paddle_block", []),
    ("d_mlp_multistep_adam_freq1", "torch_mlp", "paddle_mlp", []),
    ("d_mlp_multistep_adam_freq2", "torch_mlp", "paddle_mlp", []),
    ("f_dtype_float16", "torch_net", "paddle_net", []),
    ("f_dtype_bfloat16", "paddle_net", "paddle_net_copy", []),
    ("f_dtype_bfloat16", "torch_net", "paddle_net", []),  # the partial dump: parameters only
    ("h_layer_map_mha_identical", "torch_mha_net", "paddle_mha_net", []),
    ("i_auto_diff_block", "torch_block", "paddle_block", []),
]


def _convert_side(case: str, side: str, out: Path) -> Path:
    root = corpus_dir() / case
    weights = root / "post_step_weights" / side
    convert_padiff(root / "padiff_dump" / side, out, update_weights=weights if weights.is_dir() else None)
    return out


def _diff(a: Path, b: Path, *options: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["diff", str(a), str(b), "--json", "-", "--no-progress", *options])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def test_a_conversion_to_a_url_carries_its_account_of_what_was_missing(tmp_path: Path) -> None:
    """The manifest's source is completed after the parts are written: at a URL too."""
    dump = next(d for d in model_dumps() if "rank" in str(next(d.rglob("report.json"), "")))
    partial = tmp_path / "partial"
    shutil.copytree(dump, partial)
    next(partial.rglob("params.json")).unlink()
    result = convert_padiff(partial, "memory://padiff-conversion/trace")
    assert result.out == "memory://padiff-conversion/trace" and result.partial
    source = load_trace("memory://padiff-conversion/trace").manifest.source
    assert source is not None and source["missing"] == result.missing and any("params.json" in m for m in source["missing"])


@pytest.mark.parametrize("case,a,b,options", IDENTICAL, ids=[f"{c[0]}:{c[1]}" for c in IDENTICAL])
def test_identical_pairs_pass(case: str, a: str, b: str, options: list[str], tmp_path: Path) -> None:
    code, verdict = _diff(_convert_side(case, a, tmp_path / "a"), _convert_side(case, b, tmp_path / "b"), *options)
    assert code == 0 and verdict["status"] == "pass", verdict["first_divergence"]
    assert verdict["summary"]["units"] >= 4 and verdict["summary"]["diverged"] == 0
    compared_stages = {n["stage"] for n in verdict["nodes"] if n["status"] != "skipped"}
    assert compared_stages >= {"forward", "backward"}


def test_api_nodes_are_compared_across_frameworks(tmp_path: Path) -> None:
    case = "b_block_identical_apicheck"
    code, verdict = _diff(_convert_side(case, "torch_block", tmp_path / "a"), _convert_side(case, "paddle_block", tmp_path / "b"))
    assert code == 0
    ops = {n["a"]["route"]: n["b"]["route"] for n in verdict["nodes"] if "#" in n["a"]["route"] and n["status"] != "skipped"}
    assert ops["attn.torch_matmul#0"] == "attn.paddle_matmul#0"
    assert ops["attn.torch_nn_functional_softmax#0"] == "attn.paddle_nn_functional_softmax#0"
    assert ops["attn.torch_Tensor_permute#3"] == "attn.paddle_Tensor_transpose#3"
    assert len(ops) == 10
    # torch transposes K for its matmul, paddle's matmul does (transpose_y): that one has no counterpart
    assert [(u["side"], u["route"]) for u in verdict["unmatched"]] == [("a", "attn.torch_Tensor_transpose#0")]


def test_ln_eps_divergence_is_introduced_at_ln1(tmp_path: Path) -> None:
    a = _convert_side("c_block_ln_eps", "torch_block", tmp_path / "a")
    b = _convert_side("c_block_ln_eps", "paddle_block", tmp_path / "b")
    code, verdict = _diff(a, b)
    first = verdict["first_divergence"]
    assert code == 1
    assert (first["stage"], first["a"]["route"], first["b"]["route"], first["kind"]) == ("forward", "ln1", "ln1", "introduced")
    # In completion order, everything before ln1 agrees and everything from ln1 on diverges.
    # (PaDiff records no layer inputs, so the engine cannot show that ffn_in & co. only inherit.)
    forward = [n for n in verdict["nodes"] if n["stage"] == "forward" and n["a"]["route"]]
    routes = [n["a"]["route"] for n in forward]
    assert routes == [
        "attn.q_proj",
        "attn.k_proj",
        "attn.v_proj",
        "attn.out_proj",
        "attn",
        "ln1",
        "ffn_in",
        "act",
        "ffn_out",
        "ln2",
    ]
    assert [n["status"] == "diverged" for n in forward] == [r in ("ln1", "ffn_in", "act", "ffn_out", "ln2") for r in routes]


def test_partial_bfloat16_dump_says_what_is_missing(tmp_path: Path) -> None:
    dump = corpus_dir() / "f_dtype_bfloat16" / "padiff_dump" / "torch_net"
    result = CliRunner().invoke(cli, ["convert", "padiff", str(dump), str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "PARTIAL DUMP" in result.output
    assert "step_0/rank_0/report.json: missing" in result.output
    assert "crashed" in result.output
    assert "tensor_0.npy, tensor_1.npy" in result.output  # present but attributable to nothing
    trace, records = _records(tmp_path / "t")
    source = trace.manifest.source
    assert source is not None
    assert any("report.json: missing" in m for m in source["missing"])
    assert sorted({(k[1], k[3]) for k in records}) == [("backward", "parameter_grad"), ("forward", "parameter")]
    assert {k[2] for k in records} == {"fc1", "fc2"}
    assert trace.calls().num_rows == 0
    # the nodes still follow the parameter tree, with the root stripped to ""
    routes = [n["route"] for n in trace.nodes().to_pylist()]
    assert routes == ["", "fc1", "to_lowp", "scale", "to_fp32", "fc2"]


def test_paddle_bfloat16_bits_are_restored_identically(tmp_path: Path) -> None:
    dump = corpus_dir() / "f_dtype_bfloat16" / "padiff_dump" / "paddle_net"
    convert_padiff(dump, tmp_path / "p")
    trace, records = _records(tmp_path / "p")
    report = json.loads((dump / "step_0" / "rank_0" / "report.json").read_text())
    lowp = next(c for c in report["tree"][0]["children"] if c["route"] == "paddle_net.to_lowp")
    raw = np.load(dump / "step_0" / "rank_0" / "tensors" / PurePosixPath(lowp["fwd_outputs"][0]["path"]).name)
    assert raw.dtype == np.uint16 and lowp["fwd_outputs"][0]["dtype"] == "paddle.bfloat16"
    rec = records[(0, "forward", "to_lowp", "output", "0", 0)]
    assert rec["dtype"] == "bfloat16"
    got = trace.read(0, rec["array"])
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.view(np.uint16), raw)
    grad = records[(0, "backward", "scale", "grad_input", "0", 0)]
    assert grad["dtype"] == "bfloat16"


def test_trace_conventions(tmp_path: Path) -> None:
    root = corpus_dir() / "b_block_identical_apicheck" / "padiff_dump" / "paddle_block"
    convert_padiff(root, tmp_path / "p")
    trace, records = _records(tmp_path / "p")
    nodes = trace.nodes().to_pylist()
    by_route = {n["route"]: n for n in nodes}
    assert nodes[0]["route"] == "" and nodes[0]["parent"] is None and nodes[0]["class_name"] == "PaddleBlock"
    assert by_route["attn.q_proj"]["parent"] == by_route["attn"]["node"]
    matmul = by_route["attn.paddle_matmul#1"]
    assert matmul["kind"] == "op" and matmul["class_name"] == "matmul" and matmul["parent"] == by_route["attn"]["node"]
    assert json.loads(matmul["attrs"])["padiff_api"] == "paddle.matmul"
    assert by_route["paddle_Tensor___add__#1"]["parent"] == by_route[""]["node"]
    # registration order from params.json: positions of the root's children
    kids = sorted((n["position"], n["route"]) for n in nodes if n["parent"] == by_route[""]["node"] and n["kind"] == "module")
    assert [r for _, r in kids] == ["attn", "ln1", "ffn_in", "act", "ffn_out", "ln2"]
    # calls.end follows metas.fwd_step
    report = json.loads((root / "step_0" / "rank_0" / "report.json").read_text())
    fwd_steps = {}
    stack = [(report["tree"][0], "")]
    while stack:
        node, _ = stack.pop()
        stack += [(c, "") for c in node["children"]]
        if node["type"] == "net":
            route = node["route"].removeprefix("paddle_block").removeprefix(".")
            fwd_steps[route] = node["metas"]["fwd_step"]
    names = {n["node"]: n["route"] for n in nodes}
    forward = [c for c in trace.calls().to_pylist() if c["stage"] == "forward"]
    ends = {names[c["node"]]: c["end"] for c in forward}
    assert sorted(fwd_steps, key=fwd_steps.__getitem__) == sorted(fwd_steps, key=ends.__getitem__)
    assert all(c["begin"] < c["end"] for c in forward)
    # bwd_grads are gradients w.r.t. inputs; params.json gives parameters and their gradients
    assert records[(0, "backward", "ln1", "grad_input", "0", 0)]["shape"] == [2, 5, 16]
    assert records[(0, "forward", "ln1", "parameter", "weight", None)]["shape"] == [16]
    assert records[(0, "backward", "ln1", "parameter_grad", "bias", None)]["shape"] == [16]
    backward = {names[c["node"]]: c for c in trace.calls().to_pylist() if c["stage"] == "backward"}
    assert backward["ln2"]["end"] < backward["ln1"]["end"] < backward[""]["end"]


def test_update_weights_become_stage_update(tmp_path: Path) -> None:
    case = corpus_dir() / "d_mlp_multistep_adam_freq1"
    convert_padiff(case / "padiff_dump" / "paddle_mlp", tmp_path / "p", update_weights=case / "post_step_weights" / "paddle_mlp")
    trace, records = _records(tmp_path / "p")
    assert trace.steps == [0, 1, 2]
    for step in (0, 1):
        after = trace.read(0, records[(step, "update", "fc1", "parameter", "weight", None)]["array"])
        next_forward = trace.read(0, records[(step + 1, "forward", "fc1", "parameter", "weight", None)]["array"])
        before = trace.read(0, records[(step, "forward", "fc1", "parameter", "weight", None)]["array"])
        np.testing.assert_array_equal(after, next_forward)  # what the optimizer wrote is what the next step used
        assert not np.array_equal(after, before)


# --------------------------------------------------------------------------- other layouts


def _copy_dump(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in dst.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def _rewrite(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _to_v0(doc: dict[str, Any]) -> None:
    doc["tree"] = doc["tree"][0]
    stack = [doc["tree"]]
    while stack:
        node = stack.pop()
        stack += node["children"]
        node.pop("stack", None)
        for key in ("fwd_outputs", "bwd_grads"):
            node[key] = [e["path"] for e in node[key]]


def test_v0_layout_and_string_paths(tmp_path: Path) -> None:
    src = corpus_dir() / "a_mlp_identical" / "padiff_dump" / "paddle_mlp"
    dump = tmp_path / "paddle_mlp"
    dump.mkdir()
    rank = _copy_dump(src / "step_0" / "rank_0", dump / "step_0")  # v0: no rank level
    _rewrite(rank / "report.json", _to_v0)
    result = convert_padiff(dump, tmp_path / "v0")
    reference = convert_padiff(src, tmp_path / "v2")
    assert result.source["layout"] == "step_N (v0)" and result.source["padiff_generation"] == ["v0"]
    assert result.source["padiff_version"][0].startswith("PaDiff eae9470")
    assert reference.source["padiff_generation"] == ["v2"]
    code, verdict = _diff(tmp_path / "v0", tmp_path / "v2", "--mode", "bitwise")
    assert code == 0 and verdict["summary"]["units"] == verdict["summary"]["pass"] >= 6  # bit for bit
    assert result.records == reference.records


def test_several_forward_roots_and_ranks(tmp_path: Path) -> None:
    src = corpus_dir() / "a_mlp_identical" / "padiff_dump" / "torch_mlp"
    dump = _copy_dump(src, tmp_path / "torch_mlp")
    report = dump / "step_0" / "rank_0" / "report.json"

    def two_calls(doc: dict[str, Any]) -> None:
        second = json.loads(json.dumps(doc["tree"][0]))
        stack = [second]
        while stack:
            node = stack.pop()
            stack += node["children"]
            node["metas"]["fwd_step"] += 100
        doc["tree"].append(second)

    _rewrite(report, two_calls)
    shutil.copytree(dump / "step_0" / "rank_0", dump / "step_0" / "rank_2")
    shutil.copytree(dump / "step_0" / "rank_0", dump / "step_0" / "rank_1")
    shutil.copytree(dump / "step_0" / "rank_2", dump / "step_1" / "rank_2")  # step 1 lost ranks 0 and 1
    result = convert_padiff(dump, tmp_path / "t")
    assert result.missing == ["step_1: no folder for rank(s) [0, 1] (the dump has ranks up to 2)"]
    trace = load_trace(tmp_path / "t")
    assert trace.ranks == [0, 1, 2] and trace.manifest.world_size == 3 and trace.complete
    assert trace.parts[2].manifest.steps == (0, 1) and trace.parts[1].manifest.steps == (0,)
    calls = trace.parts[1].calls.to_pylist()
    nodes = {n["node"]: n["route"] for n in trace.parts[1].nodes.to_pylist()}
    root_calls = sorted((c["call"], c["begin"], c["end"]) for c in calls if nodes[c["node"]] == "")
    assert [c[0] for c in root_calls] == [0, 1] and root_calls[0][2] < root_calls[1][1]
    assert sorted(c["call"] for c in calls if nodes[c["node"]] == "fc1") == [0, 1]
    outputs = [r for r in trace.parts[1].tensors.to_pylist() if r["role"] == "output" and nodes[r["node"]] == "fc2"]
    assert sorted(r["call"] for r in outputs) == [0, 1]


def test_padiffguard_v3_layout(tmp_path: Path) -> None:
    """v3 (2025): report.json in <root>/<name>/, bf16 outputs upcast to float32, init_weights/."""
    src = corpus_dir() / "f_dtype_bfloat16" / "padiff_dump" / "paddle_net" / "step_0" / "rank_0"
    dump = tmp_path / "paddle_net"
    dump.mkdir()
    shutil.copytree(src / "tensors", dump / "tensors")
    for path in dump.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    doc = json.loads((src / "report.json").read_text())
    lowp_name = PurePosixPath(doc["tree"][0]["children"][1]["fwd_outputs"][0]["path"]).name
    original = np.load(src / "tensors" / lowp_name)  # to_lowp output, bf16 bits
    assert original.dtype == np.uint16
    upcast = (original.astype(np.uint32) << 16).view(np.float32)
    np.save(dump / "tensors" / lowp_name, upcast)
    (dump / "init_weights").mkdir()
    weight = np.arange(64, dtype=np.float32).reshape(8, 8)
    np.save(dump / "init_weights" / "fc1.weight.npy", weight)
    (dump / "first_input").mkdir()
    np.save(dump / "first_input" / "input_0.npy", np.ones((3, 8), np.float32))
    doc.update(
        has_init_weights=True,
        init_weights_dir="init_weights",
        has_first_input=True,
        first_input_dir="first_input",
        first_input_count=1,
    )
    (dump / "report.json").write_text(json.dumps(doc))
    result = convert_padiff(dump, tmp_path / "t")
    assert result.source["layout"] == "flat (PaDiffGuard, v3)" and result.source["padiff_generation"] == ["v3"]
    trace, records = _records(tmp_path / "t")
    lowp = records[(0, "forward", "to_lowp", "output", "0", 0)]
    assert lowp["dtype"] == "bfloat16"
    np.testing.assert_array_equal(trace.read(0, lowp["array"]).view(np.uint16), original)
    np.testing.assert_array_equal(trace.read(0, records[(0, "forward", "fc1", "parameter", "weight", None)]["array"]), weight)
    assert records[(0, "forward", "", "input", "0", 0)]["shape"] == [3, 8]
    assert any("params.json: missing" in m for m in result.missing)


# --------------------------------------------------------------------------- hostile dumps


def test_a_symlink_out_of_the_dump_is_refused(tmp_path: Path) -> None:
    dump = _copy_dump(corpus_dir() / "a_mlp_identical" / "padiff_dump" / "torch_mlp", tmp_path / "torch_mlp")
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros(3))
    target = dump / "step_0" / "rank_0" / "tensors" / "tensor_1.npy"
    target.unlink()
    os.symlink(secret, target)
    result = CliRunner().invoke(cli, ["convert", "padiff", str(dump), str(tmp_path / "t")])
    assert result.exit_code == 3
    assert "outside the dump folder" in result.output and "Traceback" not in result.output


def test_a_path_is_used_only_by_its_base_name(tmp_path: Path) -> None:
    dump = _copy_dump(corpus_dir() / "a_mlp_identical" / "padiff_dump" / "torch_mlp", tmp_path / "torch_mlp")

    def escape(doc: dict[str, Any]) -> None:
        doc["tree"][0]["fwd_outputs"][0]["path"] = "/home/alice/../../../etc/passwd"

    _rewrite(dump / "step_0" / "rank_0" / "report.json", escape)
    result = CliRunner().invoke(cli, ["convert", "padiff", str(dump), str(tmp_path / "t")])
    assert result.exit_code == 3 and "refusing tensor path" in result.output


def test_a_pickled_npy_is_refused_and_never_runs(tmp_path: Path) -> None:
    dump = _copy_dump(corpus_dir() / "a_mlp_identical" / "padiff_dump" / "torch_mlp", tmp_path / "torch_mlp")
    marker = tmp_path / "pwned"
    payload = np.array([_Payload(str(marker))], dtype=object)
    np.save(dump / "step_0" / "rank_0" / "tensors" / "tensor_1.npy", payload, allow_pickle=True)
    result = CliRunner().invoke(cli, ["convert", "padiff", str(dump), str(tmp_path / "t")])
    assert result.exit_code == 3 and "not a plain .npy" in result.output
    assert not marker.exists()
    np.load(dump / "step_0" / "rank_0" / "tensors" / "tensor_1.npy", allow_pickle=True)  # control: the payload is live
    assert marker.read_text() == "ran"


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"with open({self.path!r}, 'w') as f: f.write('ran')",))


def test_a_dump_root_with_one_model(tmp_path: Path) -> None:
    root = tmp_path / "padiff_dump"
    _copy_dump(corpus_dir() / "a_mlp_identical" / "padiff_dump" / "torch_mlp", root / "torch_mlp")
    assert convert_padiff(root, tmp_path / "t").source["model_name"] == "torch_mlp"


def test_not_a_dump_and_several_models(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no PaDiff dump"):
        convert_padiff(tmp_path, tmp_path / "t")
    result = CliRunner().invoke(
        cli, ["convert", "padiff", str(corpus_dir() / "a_mlp_identical" / "padiff_dump"), str(tmp_path / "t")]
    )
    assert result.exit_code == 3 and "several models" in result.output


@pytest.mark.parametrize(
    "damage",
    [
        lambda doc: doc["tree"][0].update(children="fc1"),
        lambda doc: doc["tree"][0]["children"].append(7),
        lambda doc: doc["tree"][0].update(fwd_outputs={"path": "x"}),
        lambda doc: doc["tree"][0].update(route=["paddle"]),
    ],
    ids=["children-string", "child-number", "outputs-object", "route-list"],
)
def test_malformed_json_is_one_line(damage: Any, tmp_path: Path) -> None:
    dump = _copy_dump(corpus_dir() / "a_mlp_identical" / "padiff_dump" / "torch_mlp", tmp_path / "torch_mlp")
    _rewrite(dump / "step_0" / "rank_0" / "report.json", damage)
    result = CliRunner().invoke(cli, ["convert", "padiff", str(dump), str(tmp_path / "t")])
    assert result.exit_code == 3, result.output
    assert len(result.output.strip().splitlines()) == 1 and "report.json" in result.output


@pytest.mark.parametrize(
    "text,expected",
    [
        ("paddle.float32", "float32"),
        ("torch.bfloat16", "bfloat16"),
        ("paddle.bfloat16", "bfloat16"),
        ("VarType.FP16", "float16"),
        ("torch.int64", "int64"),
        ("paddle.bool", "bool"),
        ("torch.qint8", None),
        (None, None),
    ],
)
def test_dtype_strings(text: str | None, expected: str | None) -> None:
    from tracespec.convert.padiff import _spec_dtype

    assert _spec_dtype(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("paddle.Size([4, 8])", (4, 8)),
        ("torch.Size([2, 0, 3])", (2, 0, 3)),
        ("[4, 8]", (4, 8)),
        ("torch.Size([])", ()),
        ("4x8", None),
    ],
)
def test_shape_strings(text: str, expected: tuple[int, ...] | None) -> None:
    from tracespec.convert.padiff import _parse_shape

    assert _parse_shape(text) == expected
