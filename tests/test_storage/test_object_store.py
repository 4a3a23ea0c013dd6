"""Traces on object stores, against real servers started by conftest.py (moto's S3,
fake-gcs-server, Azurite), through the client libraries a user has (s3fs, gcsfs, adlfs): record,
show, validate, diff, crash, copy. What the stores could do differently runs on each of them
(``store``); what is tracespec's alone runs on S3 (``bucket``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_storage.conftest import ObjectStore

import tracespec
from tracespec.cli import cli
from tracespec.errors import StorageError, UsageError
from tracespec.storage import copy as copy_module
from tracespec.storage import copy_trace, load_trace, validate_trace


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tracespec ARGS`` in a new process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "tracespec.cli", *args], capture_output=True, text=True, timeout=300, env=env)


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def record_run(model: torch.nn.Module, where: str | Path, steps: int = 2) -> None:
    x = torch.linspace(-1, 1, 24).reshape(3, 8)
    with tracespec.record(model, str(where), capture="full") as rec:
        for _ in range(steps):
            model(x).sum().backward()
            rec.step()


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def verdict_without_paths(path: Path) -> dict[str, object]:
    """A verdict document as ``diff --json`` wrote it, less where its traces were."""
    verdict = json.loads(path.read_text())
    for side in ("a", "b"):
        del verdict[side]["path"]
    return dict(verdict)


def test_a_torch_recording_to_a_store_reads_back_as_the_local_one(store: ObjectStore, tmp_path: Path) -> None:
    bucket = store.new_bucket()
    record_run(make_model(), f"{bucket}/a")
    record_run(make_model(), tmp_path / "local")
    remote, local = load_trace(f"{bucket}/a"), load_trace(tmp_path / "local")
    assert remote.complete and remote.path == f"{bucket}/a"
    columns = ["step", "stage", "role", "slot", "dtype", "shape", "hash", "array"]
    assert remote.tensors().select(columns).to_pylist() == local.tensors().select(columns).to_pylist()
    for record in remote.tensors().to_pylist():
        if record["array"] is not None:
            np.testing.assert_array_equal(remote.read(0, record["array"]), local.read(0, record["array"]))
    done = run_cli("validate", "--deep", f"{bucket}/a")
    assert done.returncode == 0, done.stderr
    assert "complete" in done.stdout and "INCOMPLETE" not in done.stdout
    shown = run_cli("show", f"{bucket}/a", "--depth", "2")
    assert shown.returncode == 0, shown.stderr
    assert "Linear" in shown.stdout and f"{bucket}/a" in shown.stdout


def test_diff_of_remote_traces_gives_the_verdict_of_the_local_ones(store: ObjectStore, tmp_path: Path) -> None:
    bucket = store.new_bucket()
    for where in (f"{bucket}/ref", tmp_path / "ref"):
        record_run(make_model(), where)
    for where in (f"{bucket}/changed", tmp_path / "changed"):
        changed = make_model()
        with torch.no_grad():
            changed[2].weight[0, 0] += 0.5
        record_run(changed, where)
    local = CliRunner().invoke(
        cli, ["diff", str(tmp_path / "ref"), str(tmp_path / "changed"), "--json", str(tmp_path / "local.json")]
    )
    assert local.exit_code == 1, local.output

    remote = run_cli(
        "diff",
        f"{bucket}/ref",
        f"{bucket}/changed",
        "--json",
        str(tmp_path / "remote.json"),
        "--html",
        str(tmp_path / "report.html"),
    )
    assert remote.returncode == 1, remote.stderr
    verdict = json.loads((tmp_path / "remote.json").read_text())
    assert (verdict["a"]["path"], verdict["b"]["path"]) == (f"{bucket}/ref", f"{bucket}/changed")  # the URLs, as given
    assert verdict["first_divergence"]["a"]["route"] == "2"
    assert verdict_without_paths(tmp_path / "remote.json") == verdict_without_paths(tmp_path / "local.json")
    assert "<html" in (tmp_path / "report.html").read_text()
    mixed = run_cli("diff", f"{bucket}/ref", str(tmp_path / "changed"), "--json", str(tmp_path / "mixed.json"))
    assert mixed.returncode == 1, mixed.stderr
    assert verdict_without_paths(tmp_path / "mixed.json") == verdict_without_paths(tmp_path / "local.json")
    same = run_cli("diff", f"{bucket}/ref", str(tmp_path / "ref"))
    assert same.returncode == 0, same.stdout + same.stderr


def test_the_endpoint_can_be_given_as_storage_options_instead_of_the_environment(store: ObjectStore) -> None:
    bucket = store.new_bucket()
    record_run(make_model(), f"{bucket}/opt")
    env = {k: v for k, v in os.environ.items() if k != store.endpoint_variable}
    options = [arg for key, value in store.endpoint_options.items() for arg in ("--storage-option", f"{key}={value}")]
    done = run_cli("validate", f"{bucket}/opt", *options, env=env)
    assert done.returncode == 0, done.stderr


def test_manifest_json_is_created_once_by_a_conditional_write(store: ObjectStore) -> None:
    url = f"{store.new_bucket()}/ranks"
    with (
        tracespec.TraceWriter(url, framework="torch", rank=0, world_size=2),
        pytest.raises(UsageError, match="started by 'torch'"),
    ):
        tracespec.TraceWriter(url, framework="paddle", rank=1, world_size=2)
    assert load_trace(url).manifest.framework == "torch"


_KILLED_RECORDER = textwrap.dedent("""
    import sys, time, torch, tracespec
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.ones(3, 8)
    with tracespec.record(model, sys.argv[1], capture="full") as rec:
        for step in range(10):
            if step == 3:
                model[0](x)  # step 3 has begun: a record is handed over, then the process hangs
                print("in step 3", flush=True)
                time.sleep(600)
            model(x).sum().backward()
            rec.step()
""")


def test_a_recording_killed_mid_step_leaves_its_published_steps(store: ObjectStore, tmp_path: Path) -> None:
    bucket = store.new_bucket()
    script = tmp_path / "record.py"
    script.write_text(_KILLED_RECORDER)
    process = subprocess.Popen([sys.executable, str(script), f"{bucket}/killed"], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "in step 3"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert process.stdout is not None
        process.stdout.close()
    done = run_cli("validate", "--deep", f"{bucket}/killed")
    assert done.returncode == 0, done.stderr
    assert "INCOMPLETE" in done.stdout and "did not end" in done.stdout
    trace = load_trace(f"{bucket}/killed")
    assert not trace.complete and trace.parts[0].manifest.ending is None
    whole = [step for step in trace.steps if step not in trace.partial_steps]
    assert whole[:3] == [0, 1, 2]  # every step ended before the kill is there, whole
    reference = tmp_path / "reference"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with tracespec.record(model, str(reference), capture="full") as rec:
        for _ in range(3):
            model(torch.ones(3, 8)).sum().backward()
            rec.step()
    ours = load_trace(reference)
    columns = ["step", "stage", "role", "slot", "hash"]
    step_of = [r for r in trace.tensors().select(columns).to_pylist() if r["step"] < 3]
    assert step_of == ours.tensors().select(columns).to_pylist()


def start_hanging(script: str, *args: str, temp: Path, until: str) -> subprocess.Popen[str]:
    """Start ``python -c script args`` with its own temporary directory ``temp``, and return once
    it printed ``until`` (then it sleeps, holding what it made)."""
    env = {**os.environ, "TMPDIR": str(temp)}
    process = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None and process.stdout.readline().strip() == until
    return process


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.stdout is not None
    process.stdout.close()


def test_the_staging_folder_of_a_killed_writer_is_deleted_by_the_next_writer(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    killed = start_hanging(_KILLED_RECORDER, f"{bucket}/killed", temp=temp, until="in step 3")
    alive = start_hanging(_KILLED_RECORDER, f"{bucket}/alive", temp=temp, until="in step 3")
    try:
        stop(killed)
        staged = {folder.name.split("-")[2]: folder for folder in temp.glob("tracespec-staging-*")}
        assert sorted(staged) == sorted([str(killed.pid), str(alive.pid)])
        assert (staged[str(killed.pid)] / "rank_0" / "part.json").is_file()  # what SIGKILL leaves
        monkeypatch.setattr(tempfile, "tempdir", str(temp))
        with tracespec.TraceWriter(f"{bucket}/next", framework="numpy") as writer:
            assert not staged[str(killed.pid)].exists(), "the killed writer's staging folder is an orphan"
            assert staged[str(alive.pid)].is_dir(), "a living writer's is not"
            assert writer.path.parent == temp and writer.path.is_dir()
        assert not writer.path.exists()
        assert list(temp.glob("tracespec-staging-*")) == [staged[str(alive.pid)]]
    finally:
        stop(alive)
    assert validate_trace(f"{bucket}/alive").trace.steps[:3] == [0, 1, 2]  # nothing remote was touched


def test_the_temporary_cache_of_a_killed_reader_is_deleted_by_the_next_reader(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_run(make_model(), f"{bucket}/read")
    temp = tmp_path / "temp"
    temp.mkdir()
    reader = "import sys, time, tracespec; trace = tracespec.load_trace(sys.argv[1]); print('read', flush=True); time.sleep(600)"
    killed = start_hanging(reader, f"{bucket}/read", temp=temp, until="read")
    stop(killed)
    (cache,) = temp.glob("tracespec-cache-*")
    assert cache.name.startswith(f"tracespec-cache-{killed.pid}-") and (cache / "manifest.json").is_file()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    trace = load_trace(f"{bucket}/read")
    assert list(temp.glob("tracespec-cache-*")) == [trace.folder]


def test_a_malformed_remote_trace_exits_3_with_one_line(store: ObjectStore) -> None:
    bucket = store.new_bucket()
    record_run(make_model(), f"{bucket}/bad")
    fs = store.filesystem()
    name = bucket.split("://")[1]
    key = f"{name}/bad/rank_0/part.json"
    part = fs.cat_file(key)
    fs.pipe_file(key, part[: len(part) // 2])
    cut = run_cli("validate", f"{bucket}/bad")
    assert cut.returncode == 3 and cut.stderr.count("\n") == 1 and "[manifest_unreadable]" in cut.stderr, cut.stderr
    fs.pipe_file(key, part)
    segment = json.loads(part)["tables"]["tensors"][0]["path"]
    fs.pipe_file(f"{name}/bad/rank_0/{segment}", b"not an arrow file")
    garbled = run_cli("diff", f"{bucket}/bad", f"{bucket}/bad")
    assert garbled.returncode == 3 and garbled.stderr.count("\n") == 1 and "[table_invalid]" in garbled.stderr, garbled.stderr
    doc = json.loads(part)
    doc["tables"]["nodes"][0]["path"] = "../../elsewhere/nodes.arrow"
    fs.pipe_file(key, json.dumps(doc).encode())
    escape = run_cli("show", f"{bucket}/bad")
    assert escape.returncode == 3 and "[path_escape]" in escape.stderr, escape.stderr
    nothing = run_cli("validate", f"{bucket}/no-such-trace")
    assert nothing.returncode == 3 and "[not_a_trace]" in nothing.stderr, nothing.stderr


def test_an_unreachable_store_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    done = run_cli(
        "validate",
        "s3://bucket/run",
        "--storage-option",
        "endpoint_url=http://127.0.0.1:9",
        "--storage-option",
        "config_kwargs.retries.max_attempts=1",
    )
    assert done.returncode == 3 and done.stderr.count("\n") == 1 and "[storage_error]" in done.stderr, done.stderr


def test_cp_round_trip_local_store_local_gives_identical_files(store: ObjectStore, tmp_path: Path) -> None:
    bucket = store.new_bucket()
    record_run(make_model(), tmp_path / "origin", steps=3)
    up = run_cli("cp", str(tmp_path / "origin"), f"{bucket}/copied")
    assert up.returncode == 0, up.stderr
    down = run_cli("cp", f"{bucket}/copied", str(tmp_path / "back"))
    assert down.returncode == 0, down.stderr
    assert files_of(tmp_path / "back") == files_of(tmp_path / "origin")
    again = copy_trace(f"{bucket}/copied", tmp_path / "back")
    assert again.arrays_copied == 0 and again.arrays_present > 0


def test_an_interrupted_cp_resumes_where_it_stopped(bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record_run(make_model(), tmp_path / "origin", steps=3)
    monkeypatch.setattr(copy_module._Batch, "MAX_ARRAYS", 4)  # small arrays go 4 to a write here

    class Interrupted(Exception):
        pass

    def stop_after_eight(done: int, total: int) -> None:
        if done >= 8:
            raise Interrupted

    with pytest.raises(Interrupted):
        copy_trace(tmp_path / "origin", f"{bucket}/resumed", progress=stop_after_eight)
    half = validate_trace(f"{bucket}/resumed")  # no part.json yet: the rank is simply absent
    assert not half.complete and half.trace.missing_ranks() == [0]
    resumed = copy_trace(tmp_path / "origin", f"{bucket}/resumed")
    assert resumed.arrays_present == 8 and resumed.arrays_copied > 0
    copy_trace(f"{bucket}/resumed", tmp_path / "back")
    assert files_of(tmp_path / "back") == files_of(tmp_path / "origin")


def test_cp_refuses_a_destination_holding_another_trace(bucket: str, tmp_path: Path) -> None:
    record_run(make_model(0), tmp_path / "one")
    record_run(make_model(1), f"{bucket}/other")
    done = run_cli("cp", str(tmp_path / "one"), f"{bucket}/other")
    assert done.returncode == 2 and "holds another trace" in done.stderr, done.stderr


def test_cp_checks_the_data_it_copies(bucket: str, tmp_path: Path) -> None:
    record_run(make_model(), tmp_path / "origin")
    trace = load_trace(tmp_path / "origin")
    name = next(r["array"] for r in trace.tensors().to_pylist() if r["array"] is not None)
    chunk = next((tmp_path / "origin" / "rank_0" / "tensors.zarr" / name / "c").rglob("*"))
    chunk = chunk if chunk.is_file() else next(p for p in chunk.rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0xFF
    chunk.write_bytes(bytes(data))
    done = run_cli("cp", str(tmp_path / "origin"), f"{bucket}/corrupt")
    assert done.returncode == 3 and "[data_mismatch]" in done.stderr, done.stderr


def test_record_onnx_and_convert_write_to_s3(bucket: str, tmp_path: Path) -> None:
    onnx_model = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes from the exporter itself
        torch.onnx.export(make_model(), (torch.ones(3, 8),), str(onnx_model), input_names=["x"], dynamo=False)
    from tracespec.adapters.onnxruntime import record_onnx

    record_onnx(onnx_model, {"x": np.ones((3, 8), np.float32)}, f"{bucket}/onnx", capture="full")
    assert validate_trace(f"{bucket}/onnx", deep=True).complete
    from safetensors.numpy import save_file

    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(tmp_path / "w.safetensors"))
    done = run_cli("convert", "checkpoint", str(tmp_path / "w.safetensors"), f"{bucket}/ckpt")
    assert done.returncode == 0, done.stderr
    trace = load_trace(f"{bucket}/ckpt")
    array = next(r["array"] for r in trace.tensors().to_pylist() if r["array"] is not None)
    np.testing.assert_array_equal(trace.read(0, array), np.arange(12, dtype=np.float32).reshape(3, 4))


def test_a_cache_folder_keeps_what_was_fetched(bucket: str, tmp_path: Path) -> None:
    record_run(make_model(), f"{bucket}/cached")
    cache = tmp_path / "cache"
    trace = load_trace(f"{bucket}/cached", cache=cache)
    for record in trace.tensors().to_pylist():
        if record["array"] is not None:
            trace.read(0, record["array"])
    chunks = [p for p in cache.rglob("c/*") if p.is_file()]
    assert chunks, "the arrays read stay in the cache"
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    again = load_trace(f"{bucket}/cached", cache=cache)
    for record in again.tensors().to_pylist():
        if record["array"] is not None:
            again.read(0, record["array"])
    segments_and_chunks = [p for p in before if p.name not in ("manifest.json", "part.json")]
    assert all(p.stat().st_mtime_ns == before[p] for p in segments_and_chunks), "nothing cached is fetched again"
    record_run(make_model(1), f"{bucket}/cached_other")
    temporary = load_trace(f"{bucket}/cached_other")
    folder = temporary.folder
    name = next(r["array"] for r in temporary.tensors().to_pylist() if r["array"] is not None)
    temporary.read(0, name)
    assert not [p for p in (folder / "rank_0" / "tensors.zarr" / name).rglob("c/*") if p.is_file()], (
        "a temporary cache drops data once read"
    )
    del temporary
    assert not folder.exists()


def test_a_range_of_a_remote_array_fetches_only_the_chunks_that_hold_it(bucket: str, tmp_path: Path) -> None:
    array = np.arange(70, dtype=np.float32).reshape(10, 7)
    with tracespec.TraceWriter(tmp_path / "local", framework="numpy", chunk_limit=3 * 7 * 4) as w:
        node = w.add_node("", "Model")
        w.add_tensor(step=0, stage="forward", node=node, call=0, role="output", slot="0", array=array)
    copy_trace(tmp_path / "local", f"{bucket}/ranged")
    cache = tmp_path / "cache"
    trace = load_trace(f"{bucket}/ranged", cache=cache)
    name = trace.tensors().to_pylist()[0]["array"]
    np.testing.assert_array_equal(trace.read_range(0, name, 20, 43), array.reshape(-1)[20:43], strict=True)
    fetched = sorted(p.relative_to(cache).as_posix().rpartition("/c/")[2] for p in cache.rglob("c/*/*") if p.is_file())
    assert fetched == ["0/0", "1/0", "2/0"], fetched  # of 4 chunks (rows 0-2, 3-5, 6-8, 9)
    temporary = load_trace(f"{bucket}/ranged")
    np.testing.assert_array_equal(temporary.read_range(0, name, 63, 70), array.reshape(-1)[63:70], strict=True)
    assert not [p for p in temporary.folder.rglob("c/*/*") if p.is_file()], "a temporary cache drops data once read"


def test_the_store_failing_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="127.0.0.1:9|endpoint|connect"):
        load_trace(
            "s3://bucket/run",
            storage_options={"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"retries": {"max_attempts": 1}}},
        )
