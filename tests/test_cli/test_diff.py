"""``tracespec diff`` through click's CliRunner: report, JSON, exit codes, help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_compare.synthetic_nets import Knobs, record_tiny_net

import tracespec
from tracespec.cli import cli
from tracespec.compare import validate_verdict


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    return {
        "a": record_tiny_net(root / "a"),
        "same": record_tiny_net(root / "same", Knobs(einsum=True)),
        "bug": record_tiny_net(root / "bug", Knobs(bug_ln_eps=1e-2)),
    }


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), prog_name="tracespec")
    return result.exit_code, result.stdout, result.stderr


def test_agreeing_runs_exit_0(traces: dict[str, Path]) -> None:
    code, out, _ = run("diff", str(traces["a"]), str(traces["same"]))
    assert code == 0, out
    assert "PASS" in out and "Tolerances: mode norm" in out and "Next:" in out


def test_a_divergence_exits_1_and_names_the_culprit(traces: dict[str, Path]) -> None:
    code, out, _ = run("diff", str(traces["a"]), str(traces["bug"]), "--no-progress")
    assert code == 1
    assert "FAIL" in out and "blocks.1.ln (LayerNorm) INTRODUCED it" in out
    assert "Path to the first divergence" in out and "Error growth" in out and "Worst nodes" in out
    assert "Next: blocks.1.ln (LayerNorm)" in out


def test_json_to_stdout_is_the_verdict_alone(traces: dict[str, Path]) -> None:
    code, out, _ = run("diff", str(traces["a"]), str(traces["bug"]), "--json", "-")
    assert code == 1
    doc = json.loads(out)
    validate_verdict(doc)
    assert doc["first_divergence"]["a"]["route"] == "blocks.1.ln"


def test_json_to_a_file_and_the_report(traces: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "verdict.json"
    code, out, _ = run("diff", str(traces["a"]), str(traces["same"]), "--json", str(target))
    assert code == 0 and "PASS" in out
    assert json.loads(target.read_text())["status"] == "pass"


def test_options_reach_the_comparison(traces: dict[str, Path], tmp_path: Path) -> None:
    a, bug = str(traces["a"]), str(traces["bug"])
    assert run("diff", a, bug, "--atol", "1", "--rtol", "1")[0] == 0
    assert run("diff", a, bug, "--route", "blocks.0*", "--route", "embed")[0] == 0
    assert run("diff", a, bug, "--tol", "*=atol:1,rtol:1")[0] == 0
    assert run("diff", a, bug, "--stage", "backward")[0] == 0  # these traces have no backward
    assert run("diff", a, str(traces["same"]), "--mode", "bitwise")[0] == 1
    assert run("diff", a, bug, "--progress", "--read-all")[0] == 1
    layer_map = tmp_path / "map.yaml"
    layer_map.write_text("map:\n  - {a: blocks.1.ln, b: blocks.1.ln}\n")
    code, out, _ = run("diff", a, bug, "--layer-map", str(layer_map), "--read-all")
    assert code == 1 and "layer map 1" in out


@pytest.mark.parametrize(
    "args",
    [
        ("--mode", "loose"),
        ("--tol", "no-equals-sign"),
        ("--tol", "x=rtol:abc"),
        ("--step", "7"),
        ("--rank", "3"),
    ],
)
def test_usage_errors_exit_2(traces: dict[str, Path], args: tuple[str, ...]) -> None:
    code, _, err = run("diff", str(traces["a"]), str(traces["bug"]), *args)
    assert code == 2, err


def test_unreadable_inputs_exit_3_with_one_line(traces: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = run("diff", str(traces["a"]), str(tmp_path / "missing"))
    assert code == 3 and err.count("\n") == 1 and "Traceback" not in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    assert run("diff", str(traces["a"]), str(broken))[0] == 3
    bad_map = tmp_path / "bad.json"
    bad_map.write_text('{"map": 3}')
    code, _, err = run("diff", str(traces["a"]), str(traces["bug"]), "--layer-map", str(bad_map))
    assert code == 3 and "map" in err


def test_a_file_argument_is_dispatched_early(traces: dict[str, Path], tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"\0" * 16)
    code, _, err = run("diff", str(checkpoint), str(traces["a"]))
    assert code == 3 and "not a trace folder" in err


def test_help_teaches_with_examples() -> None:
    code, out, _ = run("diff", "--help")
    assert code == 0
    for text in ("Examples:", "--layer-map", "--json", "Exit codes", "INTRODUCED"):
        assert text in out


def test_a_record_whose_array_disagrees_is_invalid_input(traces: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from tracespec.storage.zarr_store import write_array

    corrupt = tmp_path / "corrupt"
    shutil.copytree(traces["bug"], corrupt)
    store = corrupt / "rank_0" / "tensors.zarr"
    trace = tracespec.load_trace(corrupt)
    head = next(n["node"] for n in trace.nodes().to_pylist() if n["route"] == "head")
    victim = next(r["array"] for r in trace.tensors().to_pylist() if r["node"] == head and r["role"] == "output")
    shutil.rmtree(store / victim)
    write_array(store, victim, np.zeros((2, 3, 5), np.float32), durable=False)
    code, _, err = run("diff", str(traces["a"]), str(corrupt), "--read-all")
    assert code == 3 and "corrupt" in err and "Traceback" not in err


def test_an_incomplete_trace_is_never_a_bare_pass(tmp_path: Path) -> None:
    """A recording cut short agrees with the reference where both hold data: exit 4, not 0, and the
    report and verdict say what was not compared."""
    import numpy as np

    from tracespec.testing.synthetic import SyntheticRecorder

    def record(path: Path, steps: int, crash: bool) -> Path:
        weight = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
        try:
            with SyntheticRecorder(path) as rec:
                net = rec.module("", "Net")
                fc = rec.module("fc", "Linear", parent=net, params={"weight": weight})
                for step in range(steps):
                    x = np.full((2, 4), step + 1, dtype=np.float32)
                    with rec.forward(net, x) as outer, rec.forward(fc, x) as inner:
                        outer.output(inner.output(x @ weight.T))
                    rec.end_step()
                if crash:
                    rec.writer.flush()  # what was written before the crash stays
                    raise RuntimeError("killed")
        except RuntimeError:
            pass
        return path

    a = record(tmp_path / "a", 3, crash=False)
    b = record(tmp_path / "b", 2, crash=True)
    assert tracespec.load_trace(b).steps == [0, 1] and not tracespec.load_trace(b).complete
    done = CliRunner().invoke(cli, ["diff", str(a), str(b), "--json", str(tmp_path / "v.json")])
    assert done.exit_code == 4, done.output
    assert "warning: B is INCOMPLETE" in done.output and "not compared: steps [2] (only in A)" in done.output
    assert "PASS: no divergence (B INCOMPLETE, see above)" in done.output
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["status"] == "pass" and verdict["coverage"]["steps_only_a"] == [2]
    assert CliRunner().invoke(cli, ["diff", str(a), str(a)]).exit_code == 0
    # a trace cut before its first step was written shares nothing: said, not a PASS of nothing
    empty = record(tmp_path / "empty", 0, crash=True)
    done = CliRunner().invoke(cli, ["diff", str(a), str(empty)])
    assert done.exit_code == 2 and "no step in common" in done.output and "B is incomplete" in done.output


def test_brief_keeps_the_verdict_and_drops_the_rest(tmp_path: Path) -> None:
    import torch

    def run(path: Path, scale: float) -> Path:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        with torch.no_grad():
            model[2].weight.mul_(scale)
        with tracespec.record(model, path, capture="full") as rec:
            model(torch.ones(3, 4)).sum().backward()
            rec.step()
        return path

    a, b = run(tmp_path / "a", 1.0), run(tmp_path / "b", 1.5)
    full = CliRunner().invoke(cli, ["diff", str(a), str(b), "--no-progress"])
    brief = CliRunner().invoke(cli, ["diff", str(a), str(b), "--no-progress", "--brief"])
    assert full.exit_code == brief.exit_code == 1
    assert "FAIL: first divergence in forward, step 0, rank 0: 2 (Linear) INTRODUCED it" in brief.output
    assert "Path to the first divergence" in brief.output and "Next: " in brief.output
    for section in ("Worst nodes", "Error growth", "Tolerances:"):
        assert section in full.output and section not in brief.output
