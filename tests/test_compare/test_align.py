"""Alignment: Myers diff with modify, layer maps, exact routes and structural alignment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tracespec
from test_compare.synthetic_nets import Knobs, record_tiny_net
from tracespec.compare.align import align_trees, diff_sequences, load_layer_map, parse_layer_map
from tracespec.compare.view import RankView
from tracespec.errors import InputFileError, TableInvalidError

letters = st.text(alphabet="abcd", max_size=12)


@given(letters, letters)
def test_diff_covers_both_sequences_in_order(a: str, b: str) -> None:
    ops = diff_sequences(len(a), len(b), lambda i, j: a[i] == b[j], lambda i, j: 0.0)
    assert [op.a for op in ops if op.a is not None] == list(range(len(a)))
    assert [op.b for op in ops if op.b is not None] == list(range(len(b)))
    assert all(a[op.a] == b[op.b] for op in ops if op.op == "keep")


@given(letters)
def test_a_sequence_diffs_to_itself_with_keeps_only(a: str) -> None:
    ops = diff_sequences(len(a), len(a), lambda i, j: a[i] == a[j], lambda i, j: 0.0)
    assert [op.op for op in ops] == ["keep"] * len(a)


def test_modify_pairs_a_changed_element_instead_of_delete_and_insert() -> None:
    a, b = "abXd", "abYd"
    ops = diff_sequences(4, 4, lambda i, j: a[i] == b[j], lambda i, j: 1.0 if (a[i], b[j]) == ("X", "Y") else 0.0)
    assert [(op.op, op.a, op.b) for op in ops] == [("keep", 0, 0), ("keep", 1, 1), ("modify", 2, 2), ("keep", 3, 3)]


def _align(a: Path, b: Path, layer_map: object = None):  # type: ignore[no-untyped-def]
    va, vb = RankView(tracespec.load_trace(a), 0), RankView(tracespec.load_trace(b), 0)
    return va, vb, align_trees(va, vb, parse_layer_map(layer_map) if layer_map is not None else None)


def test_a_tree_aligns_to_itself_by_exact_route(tmp_path: Path) -> None:
    trace = record_tiny_net(tmp_path / "a")
    va, _, alignment = _align(trace, trace)
    assert len(alignment.matches) == len(va.nodes) and not alignment.unmatched
    assert alignment.method_counts() == {"layer_map": 0, "exact": len(va.nodes), "structural": 0, "dataflow": 0, "fused": 0}


def test_renamed_submodules_align_structurally(tmp_path: Path) -> None:
    a = record_tiny_net(tmp_path / "a")
    b = record_tiny_net(tmp_path / "b", Knobs(names=("norm", "up", "down")))
    va, vb, alignment = _align(a, b)
    pairs = {va.nodes[m.a].route: vb.nodes[m.b].route for m in alignment.matches}
    assert pairs["blocks.1.ln"] == "blocks.1.norm" and pairs["blocks.2.fc2"] == "blocks.2.down"
    assert not alignment.unmatched


def test_an_extra_wrapper_is_looked_through(tmp_path: Path) -> None:
    a = record_tiny_net(tmp_path / "a")
    b = record_tiny_net(tmp_path / "b", Knobs(wrap_fc1=True))
    va, vb, alignment = _align(a, b)
    pairs = {va.nodes[m.a].route: vb.nodes[m.b].route for m in alignment.matches}
    assert pairs["blocks.0.fc1"] == "blocks.0.fc1.0"
    assert pairs["blocks.0.act"] == "blocks.0.act" and pairs["head"] == "head"
    # the wrappers hold nothing but the layer aligned in their place: accounted for, not unmatched
    assert not alignment.unmatched and alignment.call_coverage()["fraction_b"] == 1.0


def test_a_missing_layer_does_not_derail_the_rest(tmp_path: Path) -> None:
    a = record_tiny_net(tmp_path / "a", Knobs(blocks=3))
    b = record_tiny_net(tmp_path / "b", Knobs(blocks=2, names=("norm", "up", "down")))
    va, vb, alignment = _align(a, b)
    pairs = {va.nodes[m.a].route: vb.nodes[m.b].route for m in alignment.matches}
    assert pairs["head"] == "head" and pairs["blocks.0.ln"] == "blocks.0.norm"
    unmatched = {u.route: u.reason for u in alignment.unmatched if u.side == "a"}
    assert "blocks.2" in unmatched and "structural alignment found no counterpart" in unmatched["blocks.2"]
    # the missing block's leaf calls are reported call by call: B has nothing between head's neighbours
    calls = {u.route: u.reason for u in alignment.unmatched_calls if u.side == "a"}
    assert {"blocks.2.ln", "blocks.2.fc1", "blocks.2.act", "blocks.2.fc2"} <= set(calls)
    assert "records no call between 'blocks.1.fc2' and 'head'" in calls["blocks.2.ln"]


def test_paddle_linear_weights_are_transposed_by_the_layout_rule(tmp_path: Path) -> None:
    a = record_tiny_net(tmp_path / "a", Knobs(framework="torch"))
    b = record_tiny_net(tmp_path / "b", Knobs(framework="paddle", transpose_linear=True))
    va, _, alignment = _align(a, b)
    linear = [m for m in alignment.matches if va.nodes[m.a].class_name == "Linear"]
    assert linear and all(m.transforms["weight"].describe() == "transpose" for m in linear)
    assert tracespec.compare(a, b).status == "pass"
    # the same tensors, both said to be PyTorch: no rule applies and the shapes differ
    c = record_tiny_net(tmp_path / "c", Knobs(framework="torch", transpose_linear=True))
    assert tracespec.compare(a, c).status == "fail"


def test_a_layout_recorded_by_the_adapter_overrides_the_framework_rule(tmp_path: Path) -> None:
    a = record_tiny_net(tmp_path / "a", Knobs(framework="torch"))
    # an ONNX graph has no Linear layout of its own; its adapter says the weights are [in, out]
    noted = record_tiny_net(tmp_path / "noted", Knobs(framework="onnxruntime", transpose_linear=True, layout_note="in_out"))
    va, _, alignment = _align(a, noted)
    linear = [m for m in alignment.matches if va.nodes[m.a].class_name == "Linear"]
    assert linear and all(m.transforms["weight"].describe() == "transpose" for m in linear)
    assert tracespec.compare(a, noted).status == "pass"
    # a note saying the native layout cancels the Paddle rule: Paddle weights stored [out, in]
    paddle = record_tiny_net(tmp_path / "paddle", Knobs(framework="paddle", layout_note="out_in"))
    assert tracespec.compare(a, paddle).status == "pass"
    silent = record_tiny_net(tmp_path / "silent", Knobs(framework="onnxruntime", transpose_linear=True))
    assert tracespec.compare(a, silent).status == "fail"


def test_a_malformed_layout_note_is_invalid_input(tmp_path: Path) -> None:
    a = record_tiny_net(tmp_path / "a", Knobs(framework="torch"))
    bad = record_tiny_net(tmp_path / "bad", Knobs(framework="onnxruntime", layout_note="[in, out]"))
    with pytest.raises(TableInvalidError, match="parameter_layout"):
        tracespec.compare(a, bad)


def test_layer_map_globs_regexes_prefixes_and_transforms(tmp_path: Path) -> None:
    a = record_tiny_net(tmp_path / "a")
    b = record_tiny_net(tmp_path / "b", Knobs(names=("norm", "up", "down"), transpose_linear=True))
    layer_map = {
        "map": [
            {"a": "blocks.*.ln", "b": "blocks.*.norm"},
            {"a": "re:^blocks\\.(\\d)\\.fc1$", "b": "blocks.\\1.up", "transforms": {"weight": "transpose"}},
            {"a": "blocks.*.fc2", "b": "blocks.*.down", "transforms": {"weight": [{"permute": [1, 0]}]}},
            {"a": "embed", "b": "embed", "transforms": {"weight": "transpose"}},
            {"a": "head", "b": "head", "transforms": {"weight": "transpose"}},
        ],
    }
    _va, _vb, alignment = _align(a, b, layer_map)
    assert alignment.method_counts()["layer_map"] == 11
    assert tracespec.compare(a, b, layer_map=parse_layer_map(layer_map)).status == "pass"


def test_prefix_rules_apply_before_exact_matching() -> None:
    parsed = parse_layer_map({"a": {"strip_prefix": "model."}, "b": {"replace_prefix": {"transformer.h.": "blocks."}}})
    assert parsed.prefixes_a.apply("model.blocks.0") == "blocks.0"
    assert parsed.prefixes_a.apply("model") == ""
    assert parsed.prefixes_b.apply("transformer.h.3.mlp") == "blocks.3.mlp"


def test_layer_map_files_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("version: 1\nmap:\n  - {a: 'x.*', b: 'y.*'}\nignore:\n  b: ['drop*']\n")
    (tmp_path / "m.json").write_text(json.dumps({"map": [{"a": "x.*", "b": "y.*"}]}))
    assert len(load_layer_map(tmp_path / "m.yaml").rules) == 1
    assert len(load_layer_map(tmp_path / "m.json").ignore_b) == 0


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"mapping": []}, "unknown keys"),
        ({"version": 2}, "version 2"),
        ({"map": [{"a": "x"}]}, "'a', 'b'"),
        ({"map": [{"a": "re:(", "b": "y"}]}, "invalid regular expression"),
        ({"map": [{"a": "x", "b": "y", "transforms": {"weight": "flip"}}]}, "unknown transform"),
        ([1, 2], "expected dict"),
    ],
)
def test_bad_layer_maps_say_what_is_wrong(doc: object, message: str) -> None:
    with pytest.raises(InputFileError, match=message):
        parse_layer_map(doc)


def test_an_unreadable_layer_map_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("map: [unclosed")
    with pytest.raises(InputFileError, match="not valid YAML"):
        load_layer_map(tmp_path / "bad.yaml")


def test_a_pass_with_unmatched_nodes_says_so(tmp_path: Path) -> None:
    a = record_tiny_net(tmp_path / "a")
    b = record_tiny_net(tmp_path / "b", Knobs(wrap_fc1=True))
    # the map only makes an unmatched call to report (a user ignores a layer they do not trust)
    verdict = tracespec.compare(a, b, layer_map=parse_layer_map({"ignore": {"b": ["blocks.0.act"]}}))
    assert verdict.status == "pass" and [(u["side"], u["route"], u.get("call")) for u in verdict.unmatched] == [
        ("b", "blocks.0.act", None),
        ("a", "blocks.0.act", 0),
    ]
    # its output is still compared, as the input of the layer after it: the call counts as compared
    assert verdict.unmatched[1]["reason"].endswith("its output is compared, as the input of 'blocks.0.fc2'")
    assert verdict.coverage["ranks"]["0"]["calls"]["compared_a"] == verdict.coverage["ranks"]["0"]["calls"]["leaf_a"]
    assert "no counterpart" in verdict.hint
