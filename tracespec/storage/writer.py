"""Write one rank's part of a trace, streaming (spec sections "Layout", "Parts", "Completeness").

Constraints:
- The caller's thread only appends rows and hands arrays over; a worker thread turns them into
  rows, and hands tensor data to a few I/O threads that write and fsync it and to summary
  threads that compute hashes and statistics. Bytes handed over and not yet written and
  summarised are bounded: a caller that outruns the disk waits (back-pressure) instead of
  growing memory.
- Writing and summarising do not wait for each other (all release the GIL): a row is completed
  with its statistics, hash, and those of the record it repeats (``same_as``) when it is
  published.
- Crash safety comes from ordering: tensor data is written and fsynced before the row that
  references it is published (the worker waits for the I/O threads, then fsyncs the folders);
  rows are published by writing a new, complete Arrow segment under a temporary name and
  renaming it; ``part.json`` lists the segments and is replaced atomically
  after them. A process killed at any moment leaves a part whose ``part.json`` names only complete
  files, with ``complete: false``, and lists as ``partial_steps`` the steps it had not ended.
- Ranks never share a file: each writes ``rank_<R>/``; ``manifest.json`` is created once with an
  atomic no-clobber link, by whichever rank comes first.
- A trace at a URL (an object store: no rename, no fsync) is written to a local staging folder by
  the same code, and each publication uploads what it made in the order of spec section 17
  (``tracespec.storage.remote.RemotePublisher``): data, then ``zarr.json`` files, then segments,
  then ``part.json``, the commit point. ``manifest.json`` is created with a conditional PUT.
  The staging folder is held by the writer's process (``tracespec.storage.scratch``): one left by
  a killed writer is deleted by the next writer on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa

from tracespec._version import __version__
from tracespec.errors import TracespecError, UsageError
from tracespec.format.manifest import (
    MANIFEST_FILE,
    PART_FILE,
    STORE_DIR,
    Ending,
    Manifest,
    PartManifest,
    Segment,
    parse_manifest,
    part_dir_name,
)
from tracespec.format.stats import TensorStats, compute_stats, content_hash
from tracespec.format.tables import TABLE_NAMES, TABLE_SCHEMAS
from tracespec.storage.location import RemoteLocation, resolve_location
from tracespec.storage.remote import RemotePublisher
from tracespec.storage.rows import TensorKind, check_coordinates, node_row, stats_columns, tensor_kind, tensor_row, value_row
from tracespec.storage.scratch import STAGING_KIND, ScratchFolder
from tracespec.storage.zarr_store import CHUNK_BYTES, WrittenFiles, fsync_files, make_durable, write_array, write_group

__all__ = ["TraceWriter", "replace_manifest_source"]

# Statistics and hashes are computed on this many threads, one tensor each: together with the
# data writer they keep two cores busy, and take no more than that from the run being recorded.
_STATS_THREADS: Final = min(2, os.cpu_count() or 1)
_IO_THREADS: Final = 4
# What a same_as record takes from the record it repeats.
_SHARED_COLUMNS: Final = ("hash", "array", "min", "max", "mean", "std", "l2", "nan_count", "inf_count")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _producer_version() -> str:
    return __version__


def _write_atomically(path: Path, payload: bytes, durable: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(slots=True)
class _TensorJob:
    row: dict[str, Any]
    array: np.ndarray | None
    same_as: int | None
    nbytes: int


@dataclass(slots=True)
class _Barrier:
    """Publish everything queued before it, then set ``done``; ``ended_step`` closes a step."""

    done: threading.Event
    ended_step: int | None = None


class TraceWriter:
    """Streams one rank's records and tensors into a trace folder.

    Parameters
    ----------
    path:
        The trace folder; created if needed. Several ranks may write the same folder. Or a URL
        (``s3://bucket/run``, ``gs://``, ``az://``, ``memory://``; docs/storage.md): the part is
        staged in a local folder and uploaded at each publication, ``part.json`` last.
    framework, framework_version:
        What produced the values (``"torch"``, ``"paddle"``, ``"onnxruntime"``, ``"numpy"``...).
    rank, world_size:
        This writer's rank; each rank writes its own ``rank_<R>/`` part.
    device:
        Where the values were computed (``"cpu"``, ``"cuda:0"``).
    capture, metadata, dtype_policy, source:
        Recorded in ``manifest.json``: the capture options, free-form user metadata (git commit,
        hyper-parameters), the precision policy, and provenance of converted traces.
    compression:
        ``None`` (raw bytes, fastest) or ``"zstd"``.
    durable:
        fsync data, segments and manifests before publishing them (on by default).
    direct_io:
        Write chunk files of 1 MiB and more past the page cache (``O_DIRECT``) where the file
        system allows it. The recorders turn it on: while a model trains, the kernel's
        page-cache copy and write-back of a gigabyte per step cost more CPU than the recording
        itself. Off by default, because data written through the page cache is also still there
        for a reader that comes right after (directly written data is read from the disk).
    max_pending_bytes:
        Bound on tensor bytes handed over but not yet written; callers wait beyond it.
    flush_interval:
        Seconds after which rows waiting in memory are published even without a step boundary.
    chunk_limit:
        Upper bound in bytes on one Zarr chunk (arrays are split along leading axes to fit).
    overwrite:
        Replace an existing part of the same rank (and, for a single-rank trace, the manifest).
    storage_options:
        For a URL: options of its fsspec file system (``{"endpoint_url": ...}``, credentials);
        by default the store's usual environment variables and configuration files.
    staging:
        For a URL: the local folder where files wait for their upload. It holds at most what one
        publication writes. By default a temporary folder that this process holds (a lock), and
        that the next writer deletes if this process is killed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        framework: str,
        framework_version: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: str = "cpu",
        capture: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        dtype_policy: str | None = None,
        source: dict[str, Any] | None = None,
        compression: str | None = None,
        durable: bool = True,
        direct_io: bool = False,
        max_pending_bytes: int = 512 << 20,
        flush_interval: float = 2.0,
        overwrite: bool = False,
        chunk_limit: int = CHUNK_BYTES,
        storage_options: dict[str, Any] | None = None,
        staging: str | os.PathLike[str] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is outside world_size {world_size}")
        if compression not in (None, "zstd"):
            raise UsageError(f"compression {compression!r} is not one of None, 'zstd'")
        where = resolve_location(path, storage_options)
        self._remote: RemotePublisher | None = None
        self._staging: ScratchFolder | None = None
        if isinstance(where, RemoteLocation):
            # Staged files are uploaded, then deleted, right away: durability is the store's
            # (a PUT that returned is stored), and the data is read back at once (no O_DIRECT).
            if staging is None:
                self._staging = ScratchFolder(STAGING_KIND)  # deletes the staging folders of killed writers
                staging = self._staging.path
            self.path = Path(staging)
            self._remote = RemotePublisher(where, self.path, part_dir_name(rank))
            durable = direct_io = False
        else:
            self.path = where
        self.location: str = where.url if isinstance(where, RemoteLocation) else str(where)
        """Where the trace is written: its folder, or its URL."""
        self.rank = rank
        self.device = device
        self.durable = durable
        self.direct_io = direct_io
        self.compression = compression
        self.chunk_limit = chunk_limit
        self._part_dir = self.path / part_dir_name(rank)
        self._store = self._part_dir / STORE_DIR
        try:  # a writer refused here (a part already there, another framework) leaves no staging folder
            self._prepare_folder(overwrite, world_size)
            manifest = Manifest(
                framework=framework,
                framework_version=framework_version,
                created=_now(),
                world_size=world_size,
                capture=capture or {},
                metadata=metadata or {},
                dtype_policy=dtype_policy,
                source=source,
                producer_version=_producer_version(),
            )
            self._create_manifest(manifest)
        except BaseException:
            self._remove_staging()
            raise
        # The part folder only after the manifest is settled: a refused writer leaves nothing.
        (self._part_dir / "tables").mkdir(parents=True)
        self._unsynced = WrittenFiles()
        self._writing: list[Future[WrittenFiles]] = []
        write_group(self._store, "", durable=False, written=self._unsynced)

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending_rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLE_NAMES}
        self._segments: dict[str, list[Segment]] = {name: [] for name in TABLE_NAMES}
        self._jobs: deque[_TensorJob | _Barrier] = deque()
        self._pending_bytes = 0
        self._max_pending_bytes = max_pending_bytes
        self._flush_interval = flush_interval
        self._next_id = 0
        self._next_node = 0
        self._steps: set[int] = set()
        self._ended_steps: set[int] = set()  # steps whose end the worker has reached (all published)
        self._ending: Ending | None = None
        self._step_groups: set[int] = set()
        # Records that a later same_as may name, until their step ends: the caller's view
        # (step, dtype, shape, level) and the worker's (the row, whose columns a copy shares).
        self._tensor_records: dict[int, tuple[int, str, tuple[int, ...], str]] = {}
        self._shared: dict[int, dict[str, Any]] = {}  # record id -> its row
        self._summaries: list[tuple[dict[str, Any], Future[tuple[str | None, TensorStats | None]]]] = []
        self._copies: list[tuple[dict[str, Any], int]] = []  # (row, the record it is a copy of)
        self._store_arrays = 0
        self._store_bytes = 0
        self._error: BaseException | None = None
        self._closed = False
        self._complete = False
        self._sync_written()
        self._write_part_manifest()
        self._summarizer = ThreadPoolExecutor(_STATS_THREADS, thread_name_prefix=f"tracespec-summary-{rank}")
        # Arrays are written and fsynced on several threads: one file at a time, a disk waits
        # out each write's latency (direct I/O is synchronous), several keep it busy.
        self._io = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix=f"tracespec-io-{rank}")
        self._worker = threading.Thread(target=self._run, name=f"tracespec-writer-{rank}", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ set-up
    def _prepare_folder(self, overwrite: bool, world_size: int) -> None:
        if self._remote is not None:
            self._prepare_remote(overwrite, world_size)
            shutil.rmtree(self._part_dir, ignore_errors=True)  # the staging folder is scratch
        if self._part_dir.exists():
            if not overwrite:
                raise UsageError(
                    f"{self._part_dir}: a trace part for rank {self.rank} already exists; "
                    "choose a new folder or pass overwrite=True"
                )
            shutil.rmtree(self._part_dir)
            if world_size == 1 and (self.path / MANIFEST_FILE).exists():
                (self.path / MANIFEST_FILE).unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def _prepare_remote(self, overwrite: bool, world_size: int) -> None:
        assert self._remote is not None
        location, part = self._remote.location, part_dir_name(self.rank)
        if location.children(part):
            if not overwrite:
                raise UsageError(
                    f"{location.name(part)}: a trace part for rank {self.rank} already exists; "
                    "choose a new URL or pass overwrite=True"
                )
            location.remove(part)
            if world_size == 1:
                location.remove(MANIFEST_FILE)

    def _create_manifest(self, manifest: Manifest) -> None:
        target = self.path / MANIFEST_FILE
        tmp = self.path / f".{MANIFEST_FILE}.tmp-{os.getpid()}-{self.rank}"
        payload = json.dumps(manifest.to_json(), indent=2).encode()
        if self._remote is not None:
            # the store's manifest.json, created here if no rank did: the staged copy mirrors it
            stored = self._remote.manifest_payload(payload)
            if stored != payload:
                existing = parse_manifest(stored, self._remote.location.name(MANIFEST_FILE))
                if existing.framework != manifest.framework:
                    raise UsageError(
                        f"{self.location}: this trace was started by {existing.framework!r}; "
                        f"cannot add a {manifest.framework!r} part to it"
                    )
            target.unlink(missing_ok=True)
            payload = stored
        tmp.write_bytes(payload)
        if self.durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        try:
            os.link(tmp, target)  # fails if another rank created it first: never clobber
        except FileExistsError:
            existing = parse_manifest(target.read_bytes(), str(target))
            if existing.framework != manifest.framework:
                raise UsageError(
                    f"{self.path}: this trace was started by {existing.framework!r}; "
                    f"cannot add a {manifest.framework!r} part to it"
                ) from None
        finally:
            tmp.unlink()
        if self.durable:
            fsync_files([self.path])

    # ------------------------------------------------------------------ caller side
    def add_node(
        self,
        route: str,
        class_name: str,
        *,
        parent: int | None = None,
        kind: str = "module",
        position: int = 0,
        attrs: dict[str, Any] | None = None,
    ) -> int:
        """Add a node of the module tree and return its id."""
        with self._lock:
            self._raise_worker_error()
            node = self._next_node
            self._pending_rows["nodes"].append(node_row(node, parent, route, class_name, kind, position, attrs))
            self._next_node += 1
        return node

    def add_call(self, *, step: int, stage: str, node: int, call: int, begin: int, end: int) -> None:
        """Record that ``node`` ran (its ``call``-th time in this step and stage)."""
        self._check_coordinates(step, stage, node, call)
        with self._lock:
            self._raise_worker_error()
            self._steps.add(step)
            self._pending_rows["calls"].append(
                {"step": step, "stage": stage, "node": node, "call": call, "begin": begin, "end": end}
            )

    def add_tensor(
        self,
        *,
        step: int,
        stage: str,
        node: int,
        role: str,
        slot: str,
        call: int | None = None,
        array: np.ndarray | None = None,
        level: str = "full",
        stats: TensorStats | None = None,
        hash: str | None = None,
        dtype: str | None = None,
        shape: tuple[int, ...] | None = None,
        same_as: int | None = None,
    ) -> int:
        """Record one tensor and return its record id.

        ``array`` (host memory, owned by the writer from now on) is required for ``full`` and
        is used for whatever of ``stats``/``hash`` is not given. Without ``array``, ``dtype`` and
        ``shape`` describe the tensor. ``same_as`` names an earlier record whose identical tensor
        this is: its data, statistics and hash are shared instead of written again.
        """
        self._check_coordinates(step, stage, node, call, role)
        earlier = self._same_step_record(same_as, step) if same_as is not None else None
        kind = tensor_kind(array, dtype, shape, level, same_as, earlier)
        if earlier is not None:
            array = None  # the earlier record's data is this tensor's: not written again
        level = kind[2]
        row = tensor_row(step=step, stage=stage, node=node, call=call, role=role, slot=slot, kind=kind, hash=hash, stats=stats)
        keep = array if (level == "full" or (level == "stats" and stats is None) or (level == "hash" and hash is None)) else None
        record = self._enqueue(row, keep, same_as)
        with self._lock:
            self._tensor_records[record] = (step, *kind)
        return record

    def _check_coordinates(self, step: int, stage: str, node: int, call: int | None, role: str | None = None) -> None:
        check_coordinates(step, stage, node, call, role, self._next_node)

    def _same_step_record(self, record: int, step: int) -> TensorKind:
        with self._lock:
            earlier = self._tensor_records.get(record)
        if earlier is None or earlier[0] != step:
            raise UsageError(f"same_as={record} names no earlier tensor record of step {step}")
        return earlier[1:]

    def add_value(self, *, step: int, stage: str, node: int, role: str, slot: str, value: object, call: int | None = None) -> int:
        """Record a non-tensor leaf (an int, None, a string...) so nothing is silently dropped."""
        self._check_coordinates(step, stage, node, call, role)
        row = value_row(step=step, stage=stage, node=node, call=call, role=role, slot=slot, value=value)
        return self._enqueue(row, None, None)

    def _enqueue(self, row: dict[str, Any], array: np.ndarray | None, same_as: int | None) -> int:
        nbytes = int(array.nbytes) if array is not None else 0
        with self._lock:
            self._raise_worker_error()
            if self._closed:
                raise UsageError("the writer is closed")
            while self._pending_bytes and self._pending_bytes + nbytes > self._max_pending_bytes:
                self._wake.wait()
                self._raise_worker_error()
            row["id"] = self._next_id
            self._next_id += 1
            self._steps.add(row["step"])
            self._pending_bytes += nbytes
            self._jobs.append(_TensorJob(row, array, same_as, nbytes))
            self._wake.notify_all()
            return int(row["id"])

    def end_step(self, step: int) -> threading.Event:
        """Mark ``step`` as finished, without waiting: its rows are published soon, and
        ``part.json`` no longer lists it in ``partial_steps``.

        Returns an event set once that is done; :meth:`wait` for it to make the step durable.
        Records of ``step`` and earlier can no longer be named by ``same_as``.
        """
        done = threading.Event()
        with self._lock:
            self._steps.add(step)
            self._tensor_records = {k: v for k, v in self._tensor_records.items() if v[0] > step}
            self._jobs.append(_Barrier(done, ended_step=step))
            self._wake.notify_all()
        return done

    def flush(self) -> None:
        """Block until everything handed over so far is written and published."""
        done = threading.Event()
        with self._lock:
            self._raise_worker_error()
            self._jobs.append(_Barrier(done))
            self._wake.notify_all()
        self.wait(done)

    def wait(self, done: threading.Event) -> None:
        """Block until ``done`` (from :meth:`end_step`) is set; raise if the worker failed."""
        while not done.wait(0.1):
            with self._lock:
                self._raise_worker_error()
                if not self._worker.is_alive():
                    raise TracespecError("the trace writer's worker thread stopped")
        with self._lock:
            self._raise_worker_error()

    def close(self) -> None:
        """Write everything, mark the part complete (``ending`` ``closed``), and stop the worker."""
        if self._closed:
            return
        try:
            self.flush()
            self._complete = True
            self._ending = Ending("closed")
            self._write_part_manifest()
        finally:
            with self._lock:
                self._closed = True
                self._wake.notify_all()
            self._worker.join()
            self._summarizer.shutdown()
            self._io.shutdown()
            self._remove_staging()

    def abort(self, ending: Ending | None = None) -> None:
        """Stop without marking the part complete (what a crash leaves, but cleanly).

        What was handed over and not yet published is dropped (:meth:`flush` first to keep it).
        ``ending`` (how the run ended: an exception, a signal) is written to ``part.json``.
        """
        with self._lock:
            self._closed = True
            self._jobs.clear()
            self._wake.notify_all()
        self._worker.join()
        self._summarizer.shutdown()
        self._io.shutdown()
        try:
            if ending is not None and self._error is None:
                self._ending = ending
                self._write_part_manifest()
        finally:
            self._remove_staging()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
        else:
            try:
                self.flush()
            finally:
                self.abort(Ending.of_exception(exc, max(self._steps, default=None)))

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            raise TracespecError(f"writing the trace failed: {self._error}") from self._error

    # ------------------------------------------------------------------ worker side
    def _run(self) -> None:
        last_publish = time.monotonic()
        try:
            while True:
                with self._lock:
                    while not self._jobs and not self._closed:
                        if not self._wake.wait(self._flush_interval) and self._has_pending_rows():
                            break
                    if not self._jobs and self._closed:
                        return
                    job = self._jobs.popleft() if self._jobs else None
                if isinstance(job, _Barrier):
                    if job.ended_step is not None:
                        self._ended_steps.add(job.ended_step)
                    self._publish()
                    if job.ended_step is not None:
                        self._shared = {k: v for k, v in self._shared.items() if v["step"] > job.ended_step}
                    last_publish = time.monotonic()
                    job.done.set()
                elif job is not None:
                    self._process(job)
                    if time.monotonic() - last_publish > self._flush_interval:
                        self._publish()
                        last_publish = time.monotonic()
                else:
                    self._publish()
                    last_publish = time.monotonic()
        except BaseException as exc:  # surfaced to the caller at its next call
            with self._lock:
                self._error = exc
                self._wake.notify_all()

    def _has_pending_rows(self) -> bool:
        return any(self._pending_rows.values())

    def _process(self, job: _TensorJob) -> None:
        """Start the work a tensor record needs; its row is completed when it is published.

        Writing and summarising run on their own threads and do not wait for each other, so
        the disk is kept busy while statistics are computed; the array's bytes count as pending
        until both are done with it.
        """
        row, array = job.row, job.array
        with self._lock:
            self._pending_rows["tensors"].append(row)
        if job.same_as is not None:
            self._copies.append((row, job.same_as))  # filled from the earlier record at publish
        if row["dtype"] is not None:
            self._shared[row["id"]] = row
        if array is None:
            self._release(job.nbytes)
            return
        # One C-order copy (if any) shared by the data writer and the summary threads.
        array = np.require(array, requirements="C")
        need_hash = row["hash"] is None and row["level"] in ("full", "hash")
        need_stats = row["min"] is None and row["nan_count"] is None and row["level"] in ("full", "stats")
        work: list[Future[Any]] = []
        if need_hash or need_stats:
            summary = self._summarizer.submit(_summarize, array, need_hash, need_stats)
            self._summaries.append((row, summary))
            work.append(summary)
        if row["level"] == "full":
            row["array"] = self._write_array(row["step"], row["id"], array)
            work.append(self._writing[-1])
        self._release_when_done(work, job.nbytes)

    def _release_when_done(self, work: list[Future[Any]], nbytes: int) -> None:
        """Count ``nbytes`` as pending until every future in ``work`` is done (the array is
        then no longer used)."""
        remaining = [len(work)]
        countdown = threading.Lock()

        def finished(_: Future[Any]) -> None:
            with countdown:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                self._release(nbytes)

        if not work:
            self._release(nbytes)
        for future in work:
            future.add_done_callback(finished)

    def _complete_rows(self) -> None:
        """Fill in the statistics and hashes computed since the last publish, then the rows that
        share an earlier record's (in record order, so a copy of a copy is complete too)."""
        summaries, self._summaries = self._summaries, []
        for row, summary in summaries:
            digest, stats = summary.result()
            if digest is not None:
                row["hash"] = digest
            if stats is not None:
                row.update(stats_columns(stats))
        copies, self._copies = self._copies, []
        for row, source in copies:
            for key in _SHARED_COLUMNS:
                if row.get(key) is None:
                    row[key] = self._shared[source][key]

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._pending_bytes -= nbytes
            self._wake.notify_all()

    def _write_array(self, step: int, record: int, array: np.ndarray) -> str:
        """Start writing ``array`` on an I/O thread (the future goes to ``_writing``)."""
        if step not in self._step_groups:
            write_group(self._store, f"step_{step}", durable=False, written=self._unsynced)
            self._step_groups.add(step)
        name = f"step_{step}/{record}"
        self._writing.append(self._io.submit(self._write_durably, name, array))
        return name

    def _write_durably(self, name: str, array: np.ndarray) -> WrittenFiles:
        """Write one array and fsync its files (the disk writes them while others are written);
        the entries of its folders are made durable at the next publish, all at once."""
        written = WrittenFiles()
        write_array(
            self._store,
            name,
            array,
            compression=self.compression,
            durable=self.durable,
            chunk_limit=self.chunk_limit,
            written=written,
            direct_io=self.direct_io,
        )
        return written

    def _sync_written(self) -> None:
        """Wait for the arrays being written, then make every file and folder written since the
        last publish durable: files first, then the folders holding their entries (parents of
        new folders included)."""
        written, self._unsynced = self._unsynced, WrittenFiles()
        writing, self._writing = self._writing, []
        for future in writing:
            array = future.result()
            self._store_arrays += 1
            self._store_bytes += array.nbytes
            written.folders.extend([*array.folders, *(f.parent for f in array.files)])
            if self._remote is not None:
                self._remote.add_data(array.files)
        if self._remote is not None:
            self._remote.add_data(written.files)
        if not self.durable:
            return
        folders = dict.fromkeys([*(f.parent for f in written.files), *written.folders, *(d.parent for d in written.folders)])
        make_durable([*written.files, *folders])

    def _publish(self) -> None:
        with self._lock:
            batches = {name: rows for name, rows in self._pending_rows.items() if rows}
            self._pending_rows = {name: [] for name in TABLE_NAMES}
        self._sync_written()
        self._complete_rows()
        # Nodes before calls before tensors, so a published row never names an unpublished node.
        for name in TABLE_NAMES:
            rows = batches.get(name)
            if not rows:
                continue
            index = len(self._segments[name])
            relative = f"tables/{name}-{index:06d}.arrow"
            table = pa.Table.from_pylist(rows, schema=TABLE_SCHEMAS[name])
            sink = pa.BufferOutputStream()
            with pa.ipc.new_file(sink, TABLE_SCHEMAS[name]) as out:
                out.write_table(table)
            _write_atomically(self._part_dir / relative, sink.getvalue().to_pybytes(), self.durable)
            if self._remote is not None:
                self._remote.add_segment(self._part_dir / relative)
            self._segments[name].append(Segment(relative, len(rows)))
        if self.durable and batches:
            fsync_files([self._part_dir / "tables"])
        self._write_part_manifest()

    def _write_part_manifest(self) -> None:
        part = PartManifest(
            rank=self.rank,
            device=self.device,
            complete=self._complete,
            steps=tuple(sorted(self._steps)),
            # A closed part is whole; before that, a step not yet ended may miss records.
            partial_steps=() if self._complete else tuple(sorted(self._steps - self._ended_steps)),
            ending=self._ending,
            tables={name: tuple(segs) for name, segs in self._segments.items()},
            store_path=STORE_DIR,
            store_arrays=self._store_arrays,
            store_bytes=self._store_bytes,
            updated=_now(),
        )
        payload = json.dumps(part.to_json(), indent=1).encode()
        _write_atomically(self._part_dir / PART_FILE, payload, self.durable)
        if self._remote is not None:
            self._remote.publish(payload)
        if self.durable:
            fsync_files([self._part_dir])

    def _remove_staging(self) -> None:
        """Delete a staging folder this writer created (everything in it is uploaded)."""
        if self._staging is not None:
            self._staging.remove()


def _summarize(array: np.ndarray, need_hash: bool, need_stats: bool) -> tuple[str | None, TensorStats | None]:
    stats = compute_stats(array) if need_stats else None
    return (content_hash(array) if need_hash else None, stats)


def replace_manifest_source(
    path: str | os.PathLike[str], source: dict[str, Any], *, durable: bool = True, storage_options: dict[str, Any] | None = None
) -> None:
    """Replace the ``source`` of a written trace's ``manifest.json`` (a converter knows what the
    input lacked only once every part is written). Atomic, as the writer's own publications: a
    reader sees the old manifest or the new one, both valid."""
    location = resolve_location(path, storage_options)
    if isinstance(location, RemoteLocation):
        where, stored = location.name(MANIFEST_FILE), location.read_bytes(MANIFEST_FILE)
    else:
        where, stored = str(location / MANIFEST_FILE), (location / MANIFEST_FILE).read_bytes()
    doc = json.loads(stored)
    doc["source"] = source
    payload = json.dumps(doc, indent=2).encode()
    parse_manifest(payload, where)  # still a valid manifest
    if isinstance(location, RemoteLocation):
        location.put_bytes(MANIFEST_FILE, payload)  # one PUT replaces an object whole
    else:
        _write_atomically(location / MANIFEST_FILE, payload, durable)
        if durable:
            fsync_files([location])
