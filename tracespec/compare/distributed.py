"""A comparison on a Dask cluster: ``compare(a, b, client=...)``, ``tracespec diff --workers N``.

Each task compares a rank's steps, all of them or a run of them where there are fewer ranks than
tasks to keep the workers busy (:func:`tracespec.compare.engine.split_tasks`,
:func:`~tracespec.compare.engine.compare_rank`). The worker opens A and B itself from their paths or
URLs, with the storage options and cache folder the task carries, so tensor data never passes
through the scheduler or the client; it totals the bytes it will compare and sends back what its
steps came to (step summaries, the units of the detailed steps, the judgments of tensor pairs: results
without data). :func:`tracespec.compare.engine.compare_ranks_apart` runs again the few tasks that
needed what another found, and merges the outcomes, in rank and step order, into exactly the verdict
of a comparison in one process. A worker's memory is one task's comparison: a few tensors at a
time, as in one process, per thread (``--workers`` starts one thread per worker).

A tensor pair too large for one task (``RankPlan.split_bytes``, 256 MiB by default: a huge
embedding or its gradient) is measured in element ranges by sub-tasks that the task submits and
waits for, seceded from its worker's threads (so a 1-worker cluster runs them meanwhile); each
sub-task reads only its range of A and B and sends back the sums of its blocks, which the task
folds in order into the metrics one process finds, bit for bit
(:meth:`tracespec.compare.engine._Comparer._measure_apart`).

Imported only when a cluster is asked for: nothing else in tracespec imports dask. The cluster is
trusted code: Dask moves tasks (storage options and credentials among them) and their results
between its processes with pickle.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from tracespec.compare.engine import PairRanges, RankOutcome, RankPlan, RankTask, compare_rank, measure_pair_range
from tracespec.compare.metrics import RangeSums
from tracespec.compare.tolerance import Tolerance
from tracespec.compare.view import Record
from tracespec.errors import UsageError
from tracespec.storage import Trace, load_trace, location_defaults

__all__ = ["WORKER_MALLOC", "cluster_client", "cluster_workers", "forget_on_cluster", "map_on_cluster"]

CONNECT_TIMEOUT: Final = "10s"
"""How long to try to reach a scheduler given by address before saying it cannot be reached."""

WORKER_MALLOC: Final = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}
"""glibc's settings for the workers of ``--workers``. Dask starts workers with a 64 KiB trim
threshold (freed memory goes back to the system at once, which also fixes the mmap threshold at
128 KiB); a comparison allocates and frees tensors of megabytes and 2 MiB float64 blocks, each then
mapped afresh and faulted in page by page: on the benchmark's traces 3.6 M page faults and more
system than user time. Blocks and tensors up to 32 MiB come from the heap instead, and up to
128 MiB of freed memory stays for the next (the memory a comparison needs is bounded anyway)."""

_PROGRESS_EVERY: Final = 0.25
"""Seconds between a worker's progress events (each tensor pair would be too many)."""


def _dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError("a diff on a Dask cluster needs dask: pip install 'tracespec[dask]'") from None
    return distributed


@contextmanager
def cluster_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A Dask client: of a local cluster of ``workers`` processes with one thread each (started here
    and shut down on exit), or of the scheduler at ``scheduler`` (``tcp://host:8786``)."""
    distributed = _dask()
    import dask

    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"cannot reach the Dask scheduler at {scheduler!r} within {CONNECT_TIMEOUT}: {detail}") from None
        with client:
            yield client
        return
    if workers is None or workers < 1:
        raise UsageError(f"--workers must be 1 or more, not {workers}")
    # one thread per worker: a worker compares one rank at a time, its memory is one rank's; the
    # dashboard on a free port (two diffs at once must not fight over 8787); the comparison's
    # modules imported as each worker starts, not by its first task; glibc keeps freed memory; a
    # task's error is the client's to report (one line), not the worker's log's (a traceback)
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC}
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
            preload=["tracespec.compare.engine"],
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def cluster_workers(client: Any) -> int:
    """The workers of the cluster now (at least 1: tasks wait for a worker that joins later)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


def map_on_cluster(client: Any, plan: RankPlan, tasks: list[RankTask], progress: Callable[[int, int], None]) -> list[RankOutcome]:
    """:func:`compare_rank` of each task on the cluster, the outcomes in order; ``progress`` is
    called with (bytes compared, bytes to compare) as the workers report them."""
    topic = f"tracespec-progress-{uuid.uuid4().hex}"
    lock = threading.Lock()

    def on_event(event: tuple[float, tuple[int, int]]) -> None:
        with lock:  # the client's event loop calls this in its own thread
            progress(*event[1])

    client.subscribe_topic(topic, on_event)
    try:
        futures = [
            client.submit(
                _compare_rank_task,
                plan,
                task,
                topic,
                pure=False,
                key=f"tracespec-rank-{task.rank}-steps-{task.steps[0]}-{task.steps[-1]}-{uuid.uuid4().hex}",
            )
            for task in tasks
        ]
        try:
            return client.gather(futures)  # type: ignore[no-any-return]
        except _dask().KilledWorker as exc:
            # the nanny ends a worker past its memory limit (or a worker crashed): the CLI says
            # "out of memory" with its own exit code, never "diverged"
            raise MemoryError(f"a Dask worker died comparing a rank: {exc}") from None
    finally:
        client.unsubscribe_topic(topic)


class _Reporter:
    """A worker's progress: (bytes compared, bytes to compare), sent as an event on ``topic`` at
    most every quarter second."""

    def __init__(self, topic: str) -> None:
        self.topic, self.compared, self.planned, self.sent = topic, 0, 0, time.monotonic()
        self.worker = _dask().get_worker()

    def __call__(self, compared: int, planned: int) -> None:
        self.compared += compared
        self.planned += planned
        if planned or time.monotonic() - self.sent >= _PROGRESS_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.compared or self.planned:
            self.worker.log_event(self.topic, (self.compared, self.planned))
            self.compared, self.planned, self.sent = 0, 0, time.monotonic()


_OPENED: dict[tuple[str, int, str], Trace] = {}
"""The traces a worker opened, by (comparison, thread, location): a worker's next task of the same
comparison (another rank, or the same rank's next steps) does not open and check them again."""
_OPENED_LOCK = threading.Lock()


def forget_on_cluster(client: Any, diff_id: str) -> None:
    """Close what every worker keeps of comparison ``diff_id`` (the comparison is over)."""
    client.run(_forget, diff_id)


def _forget(diff_id: str) -> None:
    """Drop the traces this worker keeps for comparison ``diff_id``."""
    with _OPENED_LOCK:
        for key in [key for key in _OPENED if key[0] == diff_id]:
            del _OPENED[key]


def _opener(diff_id: str) -> Callable[[str], Trace]:
    def open_trace(location: str) -> Trace:
        key = (diff_id, threading.get_ident(), location)  # a thread's own: readers are not shared
        with _OPENED_LOCK:
            found = _OPENED.get(key)
        if found is None:
            found = load_trace(location)
            with _OPENED_LOCK:
                _OPENED[key] = found
        return found

    return open_trace


def _compare_rank_task(plan: RankPlan, task: RankTask, topic: str) -> RankOutcome:
    reporter = _Reporter(topic)
    try:
        return compare_rank(plan, task, reporter, _opener(plan.diff_id), _ranges_on_cluster(plan, task.rank))
    finally:
        reporter.flush()


def _ranges_on_cluster(plan: RankPlan, rank: int) -> PairRanges:
    """Ranges of a large tensor pair of ``rank``, measured by sub-tasks on the cluster."""

    def measure(
        ra: Record, rb: Record, tolerance: Tolerance, scale: float | None, pieces: list[tuple[int, int, bool]]
    ) -> list[RangeSums]:
        # seceded while it waits: the worker's thread runs the sub-tasks meanwhile (one worker of
        # one thread would otherwise wait for itself), and rejoins after
        with _dask().worker_client() as client:
            pair = uuid.uuid4().hex
            futures = [
                client.submit(
                    _measure_range_task,
                    plan,
                    rank,
                    ra,
                    rb,
                    piece,
                    tolerance,
                    scale,
                    pure=False,
                    key=f"tracespec-range-{rank}-{piece[0]}-{piece[1]}-{pair}",
                )
                for piece in pieces
            ]
            return client.gather(futures)  # type: ignore[no-any-return]

    return measure


def _measure_range_task(
    plan: RankPlan, rank: int, ra: Record, rb: Record, piece: tuple[int, int, bool], tolerance: Tolerance, scale: float | None
) -> RangeSums:
    open_trace = _opener(plan.diff_id)
    with location_defaults(plan.storage_options, plan.cache):
        return measure_pair_range(open_trace(plan.a), open_trace(plan.b), rank, ra, rb, piece, tolerance, scale)
