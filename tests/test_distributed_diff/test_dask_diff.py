"""A diff on a Dask cluster (issue 16): the ranks compared by workers that open the traces
themselves, merged into the byte-identical verdict of a diff in one process; a large tensor pair
measured in ranges by several workers; ``--workers`` starts a local cluster, ``--scheduler`` joins
one (here, a scheduler and workers started as processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster, get_task_stream
from test_storage.conftest import bucket, s3_endpoint  # noqa: F401 (fixtures: the storage tests' moto S3 server)

from tracespec.cli import cli
from tracespec.compare import Verdict, compare_traces
from tracespec.compare import distributed as distributed_diff
from tracespec.compare.engine import DETAIL_STEPS
from tracespec.compare.metrics import BLOCK
from tracespec.storage import copy_trace
from tracespec.testing.synthetic import SyntheticRecorder

STEPS = DETAIL_STEPS + 6
"""More steps than are detailed: the later ones are compared column-wise."""


def record_ranks(
    path: Path,
    wrong_from: dict[int, int],
    level: str = "stats",
    ranks: int = 3,
    steps: int = STEPS,
    updated: tuple[int, ...] = (),
) -> Path:
    """``ranks`` ranks of a 3-layer numpy network over ``steps`` steps; from step ``wrong_from[rank]``
    on, that rank's ``fc1`` computes with a weight 1e-3 off. After each forward, an update changes
    the weights of the layers ``updated`` (the updated weight is the next step's forward parameter:
    one tensor pair in two steps); the others stay as they are (one tensor pair in every step)."""
    for rank in range(ranks):
        weights = [np.random.default_rng(i).standard_normal((8, 8)).astype(np.float32) / 3 for i in range(3)]
        with SyntheticRecorder(path, level=level, rank=rank, world_size=ranks) as rec:
            net = rec.module("", "Net")
            layers = [rec.module(f"fc{i}", "Linear", parent=net, params={"weight": w}) for i, w in enumerate(weights)]
            for step in range(steps):
                wrong = step >= wrong_from.get(rank, steps)
                h = np.random.default_rng((rank, step)).standard_normal((4, 8)).astype(np.float32)
                with rec.forward(net, h) as outer:
                    for i, layer in enumerate(layers):
                        with rec.forward(layer, h) as inner:
                            h = inner.output(np.tanh(h @ (weights[i] * (1 + 1e-3 * (wrong and i == 1))).T))
                    outer.output(h)
                for i, layer in [(i, layers[i]) for i in updated]:
                    weights[i] = (weights[i] * 0.99 + 0.01 * np.tanh(weights[i])).astype(np.float32)
                    rec.update(layer, {"weight": weights[i]})
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


def _tasks_run(client: Client, compare: Any) -> list[tuple[int, int, int]]:
    """(rank, first step, last step) of each task the cluster ran during ``compare()``, in order
    of their end (the task keys of :func:`tracespec.compare.distributed.map_on_cluster`)."""
    with get_task_stream(client) as stream:
        compare()
    found = []
    for task in stream.data:
        parts = str(task["key"]).split("-")
        if parts[:2] == ["tracespec", "rank"]:
            found.append((int(parts[2]), int(parts[4]), int(parts[5])))
    return found


@pytest.fixture(scope="module")
def one_rank_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("one_rank")
    return {
        # trained at full: every pair read; the updated weight is the next step's forward parameter
        "trained_a": record_ranks(folder / "trained_a", {}, level="full", ranks=1, steps=8, updated=(0, 1, 2)),
        "trained_b": record_ranks(folder / "trained_b", {0: 5}, level="full", ranks=1, steps=8, updated=(0, 1, 2)),
        # fc1's weight never changes (one tensor pair in every step, judged once, at step 0), its
        # peers do: judged anew in a later step, it would take that step's scale
        "frozen_a": record_ranks(folder / "frozen_a", {}, level="full", ranks=1, steps=8, updated=(0, 2)),
        "frozen_b": record_ranks(folder / "frozen_b", {0: 6}, level="full", ranks=1, steps=8, updated=(0, 2)),
        # more steps than are detailed, with data (never column-wise): two ranks, one diverges late
        "long_a": record_ranks(folder / "long_a", {}, level="full", ranks=2, steps=DETAIL_STEPS + 4, updated=(0, 1, 2)),
        "long_b": record_ranks(folder / "long_b", {0: 12}, level="full", ranks=2, steps=DETAIL_STEPS + 4, updated=(0, 1, 2)),
    }


@pytest.mark.parametrize(
    ("a", "b", "first"),
    [("trained_a", "trained_b", 5), ("trained_a", "trained_a", None), ("frozen_a", "frozen_b", 6), ("long_a", "long_b", 12)],
    ids=["trained", "passing", "frozen-weights", "long-with-data"],
)
def test_a_ranks_steps_are_split_into_tasks_with_the_same_verdict(
    one_rank_runs: dict[str, Path], client: Client, a: str, b: str, first: int | None
) -> None:
    alone = compare_traces(one_rank_runs[a], one_rank_runs[b])
    assert (alone.first_divergence or {}).get("step") == first
    found: list[Verdict] = []
    tasks = _tasks_run(client, lambda: found.append(compare_traces(one_rank_runs[a], one_rank_runs[b], client=client)))
    assert found[0].dumps() == alone.dumps()
    # two workers, two tasks each: a rank's steps in runs (1 rank: 4 runs of 2 steps; 2 ranks: 2 of 7)
    pieces = {(rank, low, high) for rank, low, high in tasks}
    ranks = len(alone.selection["ranks"])
    assert len({piece for piece in pieces if piece[2] - piece[1] + 1 < len(alone.steps)}) == 4, tasks
    assert len({rank for rank, _, _ in pieces}) == ranks
    # a worker opens A and B once per comparison, for all its tasks, and lets them go at its end
    assert set(client.run(lambda: len(distributed_diff._OPENED)).values()) == {0}


def test_tasks_are_run_again_with_what_earlier_steps_judged(one_rank_runs: dict[str, Path], client: Client) -> None:
    """A weight recorded unchanged at every step is judged once, at step 0, with step 0's noise
    scale: a task that starts later judged it anew (another scale) and is run again, seeded."""
    alone = compare_traces(one_rank_runs["frozen_a"], one_rank_runs["frozen_b"])
    scales = {
        (unit["step"], record["noise"]["scale"])
        for unit in alone.nodes
        for record in unit["records"]
        if unit["a"]["route"] == "fc1" and unit["stage"] == "forward" and record["role"] == "parameter"
    }
    assert len({scale for _, scale in scales}) == 1 and len(scales) == 8  # one judgment for 8 steps
    tasks = _tasks_run(client, lambda: compare_traces(one_rank_runs["frozen_a"], one_rank_runs["frozen_b"], client=client))
    again = [piece for piece in set(tasks) if tasks.count(piece) > 1]
    assert again and all(low > 0 for _, low, _ in again), tasks


def test_a_rank_whose_steps_go_column_wise_is_compared_whole(long_runs: dict[str, Path], client: Client) -> None:
    """Which steps a column-wise walk compares record by record depends on the steps before: a task
    that meets one stops, and its rank is compared whole (the verdict: the parametrized test above)."""
    tasks = _tasks_run(client, lambda: compare_traces(long_runs["a"], long_runs["b"], client=client))
    assert {(rank, low, high) for rank, low, high in tasks if high - low + 1 == STEPS} >= {(r, 0, STEPS - 1) for r in range(3)}
    assert any(high - low + 1 < STEPS for _, low, high in tasks), tasks  # split first (3 ranks, 2 workers)


def test_storage_options_and_the_cache_reach_the_workers(
    one_rank_runs: dict[str, Path],
    bucket: str,  # noqa: F811 (the imported fixture, requested)
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Traces on the moto S3 server whose endpoint only ``--storage-option`` gives (not the
    environment, which the workers inherit): the workers open them, and fetch the arrays they
    compare into the ``--cache`` folder (the client reads the tables only)."""
    a, b = f"{bucket}/a", f"{bucket}/b"
    copy_trace(one_rank_runs["trained_a"], a)
    copy_trace(one_rank_runs["trained_b"], b)
    alone = compare_traces(a, b, storage_options={"endpoint_url": s3_endpoint})
    environment = {key: value for key, value in os.environ.items() if key != "AWS_ENDPOINT_URL"}
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "tracespec.cli", "diff", a, b, "--workers", "2", "--json", "-"]
    done = subprocess.run(
        [*command, "--storage-option", f"endpoint_url={s3_endpoint}", "--cache", str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == alone.dumps() and json.loads(done.stdout)["first_divergence"]["step"] == 5
    chunks = [p for p in cache.rglob("*") if p.is_file() and "tensors.zarr" in p.parts and "c" in p.parts]
    assert chunks, sorted(str(p) for p in cache.rglob("*"))


EMBEDDING = (10_000, 300)
"""A large tensor of the tests that split one: 3 million float32 (11.4 blocks of the metrics), in
chunks of 873 rows (1 MiB), whose ends are not the blocks' (ranges start on blocks)."""
SPLIT_BYTES = 16 << 20
"""Pairs of at least 16 MiB (the embedding's: 24 MB, 18 MB against float16) are measured in ranges
of 4 MiB of A and B together: 2 blocks, so that a range's blocks are folded one by one (one sum
per range, then the ranges' sums, would differ in the last bits)."""


def record_embedding(path: Path, variant: str) -> Path:
    """One step of an embedding: its weight, a lookup, the weight's gradient (rows looked up only)
    and its update. ``variant`` is B's difference from A (``same``)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(EMBEDDING).astype(np.float32)
    tokens = rng.integers(0, EMBEDDING[0], 64)
    grad = np.zeros_like(weight)
    np.add.at(grad, tokens, rng.standard_normal((64, EMBEDDING[1])).astype(np.float32))
    if variant in ("rounded", "squeezed"):
        weight = (weight * (1 + 1e-7 * rng.standard_normal(EMBEDDING))).astype(np.float32)
    elif variant == "last-rows":  # the ranges before the last agree: their sums are asked for after
        grad[-3:] += np.float32(1e-2)
    elif variant == "non-finite":  # in the second half only
        grad[EMBEDDING[0] // 2 + 5, 7], grad[-1, 0] = np.nan, np.inf
    elif variant == "half":
        weight = weight.astype(np.float16)
    elif variant == "wider":
        weight, grad = (np.concatenate([array, array[:, :1]], axis=1) for array in (weight, grad))
    update = (weight - 0.1 * grad).astype(weight.dtype)
    shaped = (lambda array: array[..., None]) if variant == "squeezed" else (lambda array: array)
    with SyntheticRecorder(path, chunk_limit=1 << 20) as rec:
        net = rec.module("", "Net")
        emb = rec.module("emb", "Embedding", parent=net, params={"weight": shaped(weight)})
        with rec.forward(net, tokens) as outer:
            with rec.forward(emb, tokens) as inner:
                out = inner.output(weight[tokens])
            outer.output(out)
        rec.parameter_grads(emb, {"weight": shaped(grad)})
        rec.update(emb, {"weight": shaped(update)})
        rec.end_step()
    return path


def _ranges_run(client: Client, compare: Any) -> list[tuple[int, int]]:
    """(start, stop) of each range of a large tensor pair that the cluster measured during ``compare()``."""
    with get_task_stream(client) as stream:
        compare()
    parts = [str(task["key"]).split("-") for task in stream.data]
    return [(int(key[3]), int(key[4])) for key in parts if key[:2] == ["tracespec", "range"]]


@pytest.fixture(scope="module")
def embedding_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("embedding")
    variants = ["same", "rounded", "last-rows", "non-finite", "half", "wider", "squeezed"]
    return {variant: record_embedding(folder / variant, variant) for variant in variants}


@pytest.mark.parametrize(
    ("variant", "options", "ranges"),
    [
        ("same", {"trust_hashes": False}, 18),  # byte comparisons only: 3 tensors of 6 ranges
        ("rounded", {}, 12),  # the forward weight and the update differ (the gradients' hashes agree)
        ("last-rows", {}, 22),  # gradient and update: 6 ranges each, then the sums of the 5 that agree
        ("non-finite", {"mode": "strict"}, 20),  # the same, ranges 0, 1, 3 and 4 agreeing
        ("half", {}, 12),  # float16 against float32
        ("wider", {}, 0),  # shapes differ: judged without data, as in one process
        ("squeezed", {}, 18),  # [10000, 300, 1] against [10000, 300]: the same elements in the same order
    ],
)
def test_a_large_tensor_pair_is_measured_in_ranges_into_the_same_verdict(
    embedding_runs: dict[str, Path], client: Client, variant: str, options: dict[str, Any], ranges: int
) -> None:
    a, b = embedding_runs["same"], embedding_runs[variant]
    alone = compare_traces(a, b, **options)
    found: list[Verdict] = []
    measured = _ranges_run(client, lambda: found.append(compare_traces(a, b, client=client, split_bytes=SPLIT_BYTES, **options)))
    assert found[0].dumps() == alone.dumps()
    assert len(measured) == ranges, measured
    assert {stop - start for start, stop in measured} <= {2 * BLOCK, EMBEDDING[0] * EMBEDDING[1] - 10 * BLOCK}
    if variant in ("last-rows", "non-finite"):
        assert not alone.passed
        gradient = next(r for u in alone.nodes for r in u["records"] if r["role"] == "parameter_grad")
        if variant == "non-finite":
            assert gradient["metrics"]["nan_agree"] is False and gradient["metrics"]["inf_agree"] is False
        else:
            assert gradient["metrics"]["worst_index"][0] >= EMBEDDING[0] - 3


def test_cli_split_mb_splits_on_a_running_cluster(embedding_runs: dict[str, Path], client: Client) -> None:
    """``--split-mb`` reaches the tasks of ``--scheduler`` (the test's cluster)."""
    a, b = str(embedding_runs["same"]), str(embedding_runs["last-rows"])
    alone = CliRunner().invoke(cli, ["diff", a, b, "--json", "-"])
    assert alone.exit_code == 1, alone.output
    done: list[Any] = []
    command = ["diff", a, b, "--json", "-", "--scheduler", client.scheduler.address, "--split-mb", "16"]
    measured = _ranges_run(client, lambda: done.append(CliRunner().invoke(cli, command)))
    assert done[0].exit_code == 1, done[0].output
    assert done[0].stdout == alone.stdout and len(measured) == 22


def test_a_large_tensor_pair_on_s3_is_measured_in_ranges_by_one_worker(
    embedding_runs: dict[str, Path],
    bucket: str,  # noqa: F811 (the imported fixture, requested)
) -> None:
    """One worker of one thread: the task waits for its ranges seceded from the worker's threads
    (else it would wait for itself); each range fetches the chunks that hold it from the bucket."""
    a, b = f"{bucket}/a", f"{bucket}/b"
    copy_trace(embedding_runs["same"], a)
    copy_trace(embedding_runs["last-rows"], b)
    alone = compare_traces(a, b)
    with (  # started here, after the S3 server: its workers inherit its environment
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as one_worker,
    ):
        found: list[Verdict] = []
        measured = _ranges_run(one_worker, lambda: found.append(compare_traces(a, b, client=one_worker, split_bytes=SPLIT_BYTES)))
    assert found[0].dumps() == alone.dumps() and not alone.passed
    assert len(measured) == 22, measured


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
