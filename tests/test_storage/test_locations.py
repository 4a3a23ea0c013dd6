"""Traces at URLs other than S3: ``memory://`` (fsspec's in-process store: the object-store code
path without a server) and ``file://`` (a local folder, by the local code path); the spec's
conformance corpus read from an object store gives the same verdicts as from folders."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from click.testing import CliRunner

from tracespec.cli import cli
from tracespec.cli.locations import parse_storage_options
from tracespec.errors import TraceFormatError, UsageError
from tracespec.storage import TraceWriter, copy_trace, load_trace, validate_trace

CONFORMANCE = Path(__file__).resolve().parents[2] / "spec" / "v1" / "conformance"


def write_small(where: str | Path, steps: int = 2) -> None:
    with TraceWriter(where, framework="numpy") as writer:
        node = writer.add_node("", "Net")
        for step in range(steps):
            writer.add_call(step=step, stage="forward", node=node, call=0, begin=0, end=1)
            writer.add_tensor(
                step=step,
                stage="forward",
                node=node,
                call=0,
                role="output",
                slot="0",
                array=np.arange(300_000, dtype=np.float32).reshape(3, 100_000) + step,
            )
            writer.end_step(step)


@pytest.fixture
def memory_url() -> str:
    return f"memory://traces-{uuid.uuid4().hex[:8]}/run"


def test_memory_url_round_trip_with_every_object_in_the_spec_layout(memory_url: str) -> None:
    write_small(memory_url)
    fs = fsspec.filesystem("memory")
    keys = {k.split("/run/", 1)[1] for k in fs.find(memory_url[len("memory:/") :])}
    assert {"manifest.json", "rank_0/part.json", "rank_0/tensors.zarr/zarr.json", "rank_0/tensors.zarr/step_1/1/c/0/0"} <= keys
    trace = load_trace(memory_url)
    assert trace.complete and trace.steps == [0, 1]
    np.testing.assert_array_equal(trace.read(0, "step_1/1")[2, :3], [200_001, 200_002, 200_003])
    assert validate_trace(memory_url, deep=True).arrays == 2


def test_file_url_is_the_local_folder(tmp_path: Path) -> None:
    write_small(f"file://{tmp_path}/run")
    assert (tmp_path / "run" / "rank_0" / "part.json").is_file()
    assert load_trace(f"file://{tmp_path}/run").path == tmp_path / "run"


def test_the_cli_reads_memory_urls(memory_url: str, tmp_path: Path) -> None:
    write_small(memory_url)
    runner = CliRunner()
    shown = runner.invoke(cli, ["validate", "--deep", memory_url])
    assert shown.exit_code == 0 and "complete" in shown.output, shown.output
    copied = runner.invoke(cli, ["cp", memory_url, str(tmp_path / "local")])
    assert copied.exit_code == 0, copied.output
    same = runner.invoke(cli, ["diff", memory_url, str(tmp_path / "local")])
    assert same.exit_code == 0, same.output


def test_storage_options_nest_on_dots_and_decode_json() -> None:
    assert parse_storage_options(("client_kwargs.endpoint_url=http://h:9000", "anon=true", "retries=3", "profile=dev")) == {
        "client_kwargs": {"endpoint_url": "http://h:9000"},
        "anon": True,
        "retries": 3,
        "profile": "dev",
    }


def test_storage_options_on_a_local_folder_or_a_bare_bucket_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="apply to URLs"):
        load_trace(tmp_path, storage_options={"anon": True})
    with pytest.raises(UsageError, match="prefix inside the bucket"):
        load_trace("memory://")


def test_a_second_rank_joins_the_manifest_the_first_created(memory_url: str) -> None:
    writers = [TraceWriter(memory_url, framework="numpy", rank=rank, world_size=2) for rank in (0, 1)]
    for writer in writers:
        writer.close()
    trace = load_trace(memory_url)
    assert trace.ranks == [0, 1] and trace.complete
    with pytest.raises(UsageError, match="started by 'numpy'"):
        TraceWriter(memory_url, framework="torch", rank=1, world_size=2, overwrite=True)
    with pytest.raises(UsageError, match="already exists"):
        TraceWriter(memory_url, framework="numpy", rank=0, world_size=2)


def test_a_remote_part_is_published_only_when_its_part_json_is(memory_url: str) -> None:
    writer = TraceWriter(memory_url, framework="numpy", flush_interval=3600)
    node = writer.add_node("", "Net")
    writer.add_tensor(step=0, stage="forward", node=node, role="output", slot="0", array=np.ones(4, np.float32))
    writer.end_step(0)
    writer.flush()
    writer.add_tensor(step=1, stage="forward", node=node, role="output", slot="0", array=np.ones(4, np.float32))
    # step 1 handed over, not published: a reader now sees step 0 whole, and nothing of step 1
    seen = load_trace(memory_url)
    assert seen.steps == [0] and seen.partial_steps == [] and seen.tensors().num_rows == 1
    writer.abort()
    assert validate_trace(memory_url, deep=True).records == 1


def test_unreferenced_objects_are_reported_by_validate_and_ignored_by_readers(memory_url: str, tmp_path: Path) -> None:
    write_small(memory_url)
    fs = fsspec.filesystem("memory")
    root = memory_url[len("memory:/") :]
    fs.pipe_file(f"{root}/rank_0/tensors.zarr/step_7/99/c/0/0", b"left by a killed writer")
    fs.pipe_file(f"{root}/rank_0/tables/tensors-000009.arrow", b"never published")
    report = validate_trace(memory_url, deep=True)
    assert report.complete and report.unreferenced == 2 and report.unreferenced_bytes == 38
    assert "2 files (0.0 MB) that no part.json names" in report.summary()
    copy_trace(memory_url, tmp_path / "copy")
    assert validate_trace(tmp_path / "copy").unreferenced == 0, "a copy leaves the garbage behind"


CASES = sorted(p.parent.name for p in CONFORMANCE.glob("*/case.json"))


@pytest.mark.parametrize("name", [c for c in CASES if c != "symlink-escape"])  # an object store has no links
def test_conformance_cases_read_from_an_object_store_give_their_verdict(name: str) -> None:
    case = json.loads((CONFORMANCE / name / "case.json").read_text())
    url = f"memory://conformance-{uuid.uuid4().hex[:8]}/{name}"
    fs = fsspec.filesystem("memory")
    source = CONFORMANCE / name / "trace"
    fs.put(
        [str(p) for p in source.rglob("*") if p.is_file()],
        [f"{url[len('memory:/') :]}/{p.relative_to(source).as_posix()}" for p in source.rglob("*") if p.is_file()],
    )
    if case.get("valid"):
        assert validate_trace(url, deep=True).complete == case["complete"]
    else:
        with pytest.raises(TraceFormatError) as raised:
            validate_trace(url, deep=True)
        assert raised.value.reason == case["error"]


def test_symlink_escape_case_stays_refused_locally(tmp_path: Path) -> None:
    """The one case an object store cannot hold still fails locally, and cp refuses it too."""
    with pytest.raises(TraceFormatError) as raised:
        copy_trace(CONFORMANCE / "symlink-escape" / "trace", f"memory://cp-{uuid.uuid4().hex[:8]}/x")
    assert raised.value.reason == "path_escape"
    shutil.rmtree(tmp_path, ignore_errors=True)
