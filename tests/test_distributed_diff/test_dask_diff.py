"""A diff on a Dask cluster (issue 16): the ranks compared by workers that open the traces
themselves, merged into the byte-identical verdict of a diff in one process; ``--workers`` starts
a local cluster, ``--scheduler`` joins one (here, a scheduler and workers started as processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster

from tracespec.cli import cli
from tracespec.compare import compare_traces
from tracespec.compare.engine import DETAIL_STEPS
from tracespec.testing.synthetic import SyntheticRecorder

STEPS = DETAIL_STEPS + 6
"""More steps than are detailed: the later ones are compared column-wise."""


def record_ranks(path: Path, wrong_from: dict[int, int], level: str = "stats", ranks: int = 3) -> Path:
    """``ranks`` ranks of a 3-layer numpy network over :data:`STEPS` steps; from step
    ``wrong_from[rank]`` on, that rank's ``fc1`` computes with a weight 1e-3 off."""
    weights = [np.random.default_rng(i).standard_normal((8, 8)).astype(np.float32) / 3 for i in range(3)]
    for rank in range(ranks):
        with SyntheticRecorder(path, level=level, rank=rank, world_size=ranks) as rec:
            net = rec.module("", "Net")
            layers = [rec.module(f"fc{i}", "Linear", parent=net, params={"weight": w}) for i, w in enumerate(weights)]
            for step in range(STEPS):
                wrong = step >= wrong_from.get(rank, STEPS)
                h = np.random.default_rng((rank, step)).standard_normal((4, 8)).astype(np.float32)
                with rec.forward(net, h) as outer:
                    for i, layer in enumerate(layers):
                        with rec.forward(layer, h) as inner:
                            h = inner.output(np.tanh(h @ (weights[i] * (1 + 1e-3 * (wrong and i == 1))).T))
                    outer.output(h)
                rec.end_step()
    return path


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as connected,
    ):
        yield connected


@pytest.fixture(scope="module")
def long_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ranks")
    return {
        "a": record_ranks(folder / "a", {}),
        # rank 2 first, at step 11; rank 0 from step 13, rank 1 never: ranks 0 and 1 must keep their
        # units of step 11, which their own walks did not (compared once more, told the step)
        "b": record_ranks(folder / "b", {2: 11, 0: 13}),
    }


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"first_step_only": True},
        {"steps": [(8, None)], "mode": "strict"},
        {"columnar": False},
    ],
    ids=["default", "first-step-only", "later-steps-strict", "record-by-record"],
)
def test_long_multi_rank_runs_give_the_same_verdict_on_dask(
    long_runs: dict[str, Path], client: Client, options: dict[str, Any]
) -> None:
    alone = compare_traces(long_runs["a"], long_runs["b"], **options)
    assert alone.first_divergence is not None
    assert (alone.first_divergence["rank"], alone.first_divergence["step"], alone.first_divergence["a"]["route"]) == (
        2,
        11,
        "fc1",
    )
    assert sorted({u["rank"] for u in alone.nodes if u["step"] == 11}) == [0, 1, 2]
    on_dask = compare_traces(long_runs["a"], long_runs["b"], client=client, **options)
    assert on_dask.dumps() == alone.dumps()


def test_runs_that_agree_give_the_same_verdict_on_dask(long_runs: dict[str, Path], client: Client) -> None:
    alone = compare_traces(long_runs["a"], long_runs["a"])
    assert alone.passed and len(alone.steps) == STEPS
    assert compare_traces(long_runs["a"], long_runs["a"], client=client).dumps() == alone.dumps()


def test_full_data_a_baseline_and_a_saved_layer_map_on_dask(tmp_path: Path, client: Client) -> None:
    a = record_ranks(tmp_path / "a", {}, level="full", ranks=2)
    b = record_ranks(tmp_path / "b", {1: 3}, level="full", ranks=2)
    a2 = record_ranks(tmp_path / "a2", {}, level="full", ranks=2)
    alone = compare_traces(a, b, save_map=tmp_path / "alone.yaml", baseline=a2)
    on_dask = compare_traces(a, b, save_map=tmp_path / "dask.yaml", baseline=a2, client=client)
    assert alone.tolerances["baseline"]["records"] > 0
    assert on_dask.dumps() == alone.dumps()
    assert (on_dask.first_divergence["rank"], on_dask.first_divergence["step"]) == (1, 3)  # type: ignore[index]
    assert (tmp_path / "dask.yaml").read_text() == (tmp_path / "alone.yaml").read_text() != ""


def test_a_corrupt_trace_found_by_a_worker_is_one_line_and_exit_3(tmp_path: Path) -> None:
    a = record_ranks(tmp_path / "a", {}, level="full", ranks=2)
    b = record_ranks(tmp_path / "b", {1: 0}, level="full", ranks=2)
    step = b / "rank_1" / "tensors.zarr" / "step_0"
    for chunk in [p for p in step.rglob("*") if p.is_file() and "c" in p.relative_to(step).parts]:
        chunk.unlink()  # found only where a worker reads these arrays (--read-all: the first it compares)
    done = subprocess.run(
        [sys.executable, "-m", "tracespec.cli", "diff", str(a), str(b), "--workers", "1", "--read-all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 3, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith("Dask: ")]
    assert len(lines) == 1 and "[chunk_missing] tensors.zarr/step_0/" in lines[0], done.stderr


def test_cli_workers_gives_the_same_json_and_the_dashboard_link(long_runs: dict[str, Path], tmp_path: Path) -> None:
    a, b = str(long_runs["a"]), str(long_runs["b"])
    alone = CliRunner().invoke(cli, ["diff", a, b, "--json", "-"])
    assert alone.exit_code == 1, alone.output
    command = [sys.executable, "-m", "tracespec.cli", "diff", a, b, "--workers", "2", "--json", "-"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stdout == alone.stdout
    assert "Dask: 2 worker(s); dashboard http://" in done.stderr
    report = subprocess.run([*command[:-2], "--progress"], capture_output=True, text=True, timeout=300)
    assert report.returncode == 1 and "first divergence in forward, step 11, rank 2: fc1 (Linear) INTRODUCED it" in report.stdout


def test_cli_scheduler_joins_a_running_cluster(long_runs: dict[str, Path], tmp_path: Path) -> None:
    address_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(address_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 120
        while not address_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(address_file.read_text())["address"]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        with Client(address) as watcher:
            watcher.wait_for_workers(2, timeout=120)
        a, b = str(long_runs["a"]), str(long_runs["b"])
        alone = CliRunner().invoke(cli, ["diff", a, b, "--first-step-only", "--json", "-"])
        done = subprocess.run(
            [sys.executable, "-m", "tracespec.cli", "diff", a, b, "--first-step-only", "--json", "-", "--scheduler", address],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 1, done.stderr
        assert done.stdout == alone.stdout and json.loads(done.stdout)["first_divergence"]["step"] == 11
        assert "Dask: 2 worker(s)" in done.stderr
    finally:
        for process in (*workers, scheduler):
            process.terminate()
        for process in (*workers, scheduler):
            process.wait(timeout=60)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:9", "not an address"])
def test_a_scheduler_that_cannot_be_reached_is_one_line_and_a_usage_error(long_runs: dict[str, Path], address: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tracespec.cli", "diff", str(long_runs["a"]), str(long_runs["b"]), "--scheduler", address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Dask scheduler at {address!r}" in lines[0], done.stderr


def test_workers_and_scheduler_together_are_refused(long_runs: dict[str, Path]) -> None:
    done = CliRunner().invoke(
        cli, ["diff", str(long_runs["a"]), str(long_runs["b"]), "--workers", "2", "--scheduler", "tcp://127.0.0.1:9"]
    )
    assert done.exit_code == 2 and "not both" in done.output


def test_without_the_options_dask_is_not_imported(long_runs: dict[str, Path]) -> None:
    code = (
        "import sys; from tracespec.cli import main; sys.argv = ['tracespec', 'diff', sys.argv[1], sys.argv[2]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')], 'dask imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(long_runs["a"]), str(long_runs["b"])], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
