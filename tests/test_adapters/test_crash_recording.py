"""What a recording leaves when its process dies (spec section 11), with real training loops.

A PyTorch and a Paddle training loop (MLP, Adam, ``capture="full"``) are killed with SIGKILL at
random moments, sent SIGTERM, or fail mid-step; each interrupted trace is compared, step by step,
with an uninterrupted run of the same steps. The loops run in processes forked from a fork
server that imported the frameworks once (see ``crash_training.py``).
"""

from __future__ import annotations

import inspect
import multiprocessing
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import crash_training
import pytest

import tracespec
from tracespec import load_trace, validate_trace

FRAMEWORKS = ["torch", "paddle"]
STEPS = 10
KILLS = 20
FORKSERVER = multiprocessing.get_context("forkserver")

Steps = dict[int, dict[str, list[dict[str, Any]]]]


@pytest.fixture(scope="module", autouse=True)
def _preload_frameworks() -> None:
    FORKSERVER.set_forkserver_preload(crash_training.PRELOAD)


def start(framework: str, folder: Path, **options: Any) -> tuple[BaseProcess, Connection]:
    """Fork a training loop; returns it and the end of the pipe it reports its progress on."""
    receive, send = FORKSERVER.Pipe(duplex=False)
    process = FORKSERVER.Process(target=crash_training.train, args=(framework, str(folder), STEPS, send), kwargs=options)
    process.start()
    send.close()
    return process, receive


def wait_recording(progress: Connection) -> None:
    assert progress.poll(120), "the training loop did not start recording"
    assert progress.recv() == "recording"


def signal_at_random_moments(
    framework: str, folder: Path, duration: float, seed: int, kills: int, send: Callable[[BaseProcess], None], **options: Any
) -> Iterator[tuple[Path, BaseProcess, list[int]]]:
    """Start the training loop ``kills`` times, each time ``send`` it a signal at a random moment
    of a step, every step in turn: after step ``k - 1`` returned, a random part of a step's time
    later. Yields the trace folder, the process and the steps whose ``rec.step()`` returned.

    Moments measured from the last step that returned, not from the start: a loaded machine
    stretches a run unevenly, and a fixed delay would land most signals in the same step."""
    rng = random.Random(seed)
    for kill in range(kills):
        trace = folder / f"kill{kill}"
        process, progress = start(framework, trace, **options)
        wait_recording(progress)
        returned: list[int] = []
        while len(returned) < kill % STEPS and progress.poll(120):
            returned.append(progress.recv())
        time.sleep(duration / STEPS * rng.random())
        send(process)
        yield trace, process, returned + returned_steps(process, progress)


def returned_steps(process: BaseProcess, progress: Connection) -> list[int]:
    """Join the process; the steps whose ``rec.step()`` returned before it ended."""
    process.join(120)
    assert process.exitcode is not None, "the training loop did not end"
    steps = []
    while True:
        try:
            steps.append(progress.recv())
        except EOFError:
            return steps


def records_by_step(folder: Path) -> Steps:
    """Each step's tensor records and calls (rows as dicts, in record and event order)."""
    trace = load_trace(folder)
    steps: Steps = {s: {"tensors": [], "calls": []} for s in trace.steps}
    for table in ("tensors", "calls"):
        for row in getattr(trace, table)().to_pylist():
            steps[row["step"]][table].append(row)
    return steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Steps, float]]:
    """Per framework: the uninterrupted run's records per step, and how long its steps took."""
    runs = {}
    for framework in FRAMEWORKS:
        folder = tmp_path_factory.mktemp("reference") / framework
        process, progress = start(framework, folder)
        wait_recording(progress)
        began = time.monotonic()
        assert returned_steps(process, progress) == list(range(STEPS))
        assert process.exitcode == 0
        assert validate_trace(folder, deep=True).complete
        runs[framework] = (records_by_step(folder), time.monotonic() - began)
    return runs


def assert_whole(found: Steps, expected: Steps, steps: list[int]) -> None:
    for step in steps:
        assert step in found, f"step {step} is missing"
        assert found[step] == expected[step], f"step {step} differs from the uninterrupted run"


def assert_prefix_of(found: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The records of a partial step are the uninterrupted step's first ones, exactly."""
    assert found == expected[: len(found)]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sigkill_at_random_moments_keeps_every_step_that_returned(
    framework: str, tmp_path: Path, reference: dict[str, tuple[Steps, float]]
) -> None:
    expected, duration = reference[framework]
    last_returned = []
    for folder, process, returned in signal_at_random_moments(framework, tmp_path, duration, 15, KILLS, BaseProcess.kill):
        if process.exitcode == 0:
            continue  # finished before the kill
        assert process.exitcode == -signal.SIGKILL
        report = validate_trace(folder, deep=True)
        part = report.trace.parts[0].manifest
        # Killed, it had no chance to say how it ended, unless it had already closed the trace.
        assert (part.ending.how if report.complete and part.ending else part.ending) == ("closed" if report.complete else None)
        found = records_by_step(folder)
        assert_whole(found, expected, returned)
        # What part.json promises: every step it lists and does not call partial is whole.
        assert_whole(found, expected, [s for s in part.steps if s not in part.partial_steps])
        for step in part.partial_steps:
            assert_prefix_of(found[step]["tensors"], expected[step]["tensors"])
        last_returned.append(returned[-1] if returned else -1)
    # The kills landed all over the run, not all before or after it.
    assert len(last_returned) >= KILLS // 2 and len(set(last_returned)) >= 4, last_returned


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sigkill_with_async_publication_loses_at_most_the_step_before(
    framework: str, tmp_path: Path, reference: dict[str, tuple[Steps, float]]
) -> None:
    expected, duration = reference[framework]
    for folder, process, returned in signal_at_random_moments(
        framework, tmp_path, duration, 16, 6, BaseProcess.kill, publish="async"
    ):
        if process.exitcode == 0:
            continue
        validate_trace(folder, deep=True)
        assert_whole(records_by_step(folder), expected, returned[:-1])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sigterm_at_random_moments_publishes_the_step_in_progress(
    framework: str, tmp_path: Path, reference: dict[str, tuple[Steps, float]]
) -> None:
    expected, duration = reference[framework]
    for folder, process, returned in signal_at_random_moments(framework, tmp_path, duration, 17, 6, BaseProcess.terminate):
        if process.exitcode == 0:
            continue
        assert process.exitcode == -signal.SIGTERM  # the default action goes on after publishing
        report = validate_trace(folder, deep=True)
        part = report.trace.parts[0].manifest
        if returned == list(range(STEPS)):  # the signal came while the recording closed: it closes first
            assert report.complete and part.ending is not None and part.ending.how == "closed"
            continue
        assert part.ending is not None and (part.ending.how, part.ending.detail) == ("signal", "SIGTERM")
        stopped_at = part.ending.step
        assert stopped_at is not None and stopped_at > (returned[-1] if returned else -1)
        found = records_by_step(folder)
        assert_whole(found, expected, list(range(stopped_at)))
        if stopped_at in found:
            assert list(part.partial_steps) == [stopped_at]
            assert_prefix_of(found[stopped_at]["tensors"], expected[stopped_at]["tensors"])
        else:
            assert list(part.partial_steps) == []  # the signal came before the step recorded anything


def forward_records(steps: Steps, step: int) -> list[dict[str, Any]]:
    return [r for r in steps[step]["tensors"] if r["stage"] == "forward"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sigterm_mid_step_publishes_its_forward_and_dies_by_the_signal(
    framework: str, tmp_path: Path, reference: dict[str, tuple[Steps, float]]
) -> None:
    expected, _ = reference[framework]
    process, progress = start(framework, tmp_path / "t", interrupt="SIGTERM", interrupt_step=3)
    wait_recording(progress)
    assert returned_steps(process, progress) == [0, 1, 2]
    assert process.exitcode == -signal.SIGTERM
    report = validate_trace(tmp_path / "t", deep=True)
    part = report.trace.parts[0].manifest
    assert not report.complete and list(part.partial_steps) == [3]
    assert part.ending is not None and part.ending.to_json() == {"how": "signal", "detail": "SIGTERM", "step": 3}
    found = records_by_step(tmp_path / "t")
    assert_whole(found, expected, [0, 1, 2])
    # Step 3 as far as it got: its whole forward, nothing of its backward.
    assert found[3]["tensors"] == forward_records(expected, 3)
    assert forward_records(expected, 3) and len(expected[3]["tensors"]) > len(found[3]["tensors"])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_exception_mid_step_reaches_the_caller_unchanged_after_publishing(framework: str, tmp_path: Path) -> None:
    crash_training.train(framework, tmp_path / "reference", STEPS)
    expected = records_by_step(tmp_path / "reference")
    with pytest.raises(crash_training.Interrupted, match="^failed mid-step 3$") as caught:
        crash_training.train(framework, tmp_path / "t", STEPS, interrupt="raise", interrupt_step=3)
    # Unchanged: raised where the loop raised it, nothing raised while it was handled.
    assert caught.traceback[-1].name == "train"
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    report = validate_trace(tmp_path / "t", deep=True)
    part = report.trace.parts[0].manifest
    assert not report.complete and list(part.partial_steps) == [3]
    assert part.ending is not None
    assert part.ending.to_json() == {"how": "exception", "detail": "Interrupted: failed mid-step 3", "step": 3}
    found = records_by_step(tmp_path / "t")
    assert_whole(found, expected, [0, 1, 2])
    assert found[3]["tensors"] == forward_records(expected, 3)


@pytest.fixture
def python_sigint_handler() -> Iterator[None]:
    """Python's own SIGINT handler, which raises KeyboardInterrupt. A process started in the
    background by a shell ignores SIGINT instead (the recorder then leaves it alone)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_sigint_handler")
def test_sigint_raises_keyboard_interrupt_after_publishing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):  # Python's handler, chained
        crash_training.train("torch", tmp_path / "t", STEPS, interrupt="SIGINT", interrupt_step=3)
    trace = load_trace(tmp_path / "t")
    ending = trace.parts[0].manifest.ending
    assert ending is not None and ending.to_json() == {"how": "signal", "detail": "SIGINT", "step": 3}
    assert trace.partial_steps == [3] and trace.steps == [0, 1, 2, 3]


@pytest.fixture
def program_sigterm_handler() -> Iterator[list[tuple[int, bool]]]:
    """A SIGTERM handler of the program's own (a graceful shutdown that only takes note of the
    signal, and of whether it was given the interrupted frame)."""
    received: list[tuple[int, bool]] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append((signum, frame is not None)))
    yield received
    signal.signal(signal.SIGTERM, previous)


def test_the_programs_own_signal_handler_is_chained_and_the_recording_goes_on(
    tmp_path: Path, program_sigterm_handler: list[tuple[int, bool]]
) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    model, optimizer, forward = crash_training.torch_loop()
    with tracespec.record(model, tmp_path / "t", optimizer=optimizer) as rec:
        assert signal.getsignal(signal.SIGTERM) != handler
        for i in range(3):
            backward = forward(i)
            if i == 1:
                signal.raise_signal(signal.SIGTERM)
                assert program_sigterm_handler == [(signal.SIGTERM, True)]
            backward()
            rec.step()
    assert signal.getsignal(signal.SIGTERM) is handler  # put back when the recording ends
    report = validate_trace(tmp_path / "t")
    assert report.complete and report.trace.steps == [0, 1, 2]
    ending = report.trace.parts[0].manifest.ending
    assert ending is not None and ending.how == "closed"


def test_an_ignored_signal_stays_ignored(tmp_path: Path) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        model, optimizer, forward = crash_training.torch_loop()
        with tracespec.record(model, tmp_path / "t", optimizer=optimizer) as rec:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            forward(0)()
            signal.raise_signal(signal.SIGINT)
            rec.step()
        assert validate_trace(tmp_path / "t").complete
    finally:
        signal.signal(signal.SIGINT, previous)


class SignalOnRepr:
    """A module argument that sends SIGTERM when the recorder writes it (its ``repr``), so the
    signal arrives while the main thread is inside the trace writer."""

    def __repr__(self) -> str:
        signal.raise_signal(signal.SIGTERM)
        return "SignalOnRepr()"


def test_a_signal_arriving_inside_the_writer_is_handled_at_the_next_hook(tmp_path: Path) -> None:
    import torch
    from torch import nn

    class Takes(nn.Module):
        def forward(self, x: torch.Tensor, marker: SignalOnRepr) -> torch.Tensor:
            return x * 2

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.takes = Takes()
            self.after = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.after(self.takes(x, SignalOnRepr()))  # type: ignore[no-any-return]

    stacks: list[list[str]] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stacks.append([f.function for f in inspect.stack()]))
    try:
        with tracespec.record(Model(), tmp_path / "t", capture="full") as rec:
            rec.model(torch.ones(2, 3))
            rec.step()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(stacks) == 1
    # Not inside the writer (which may hold its lock), but at the next hook's entry.
    assert "add_value" not in stacks[0] and "_handle_deferred_signal" in stacks[0]
    assert validate_trace(tmp_path / "t").complete  # the program's handler let the run go on


SIGNAL_WHILE_CLOSING = """
import os, signal, sys, torch
import tracespec
from tracespec.storage import TraceWriter

close = TraceWriter.close
def close_under_signal(self):
    os.kill(os.getpid(), signal.SIGTERM)  # arrives while the writer closes the trace
    close(self)
TraceWriter.close = close_under_signal
model = torch.nn.Linear(3, 2)
with tracespec.record(model, sys.argv[1], capture="full") as rec:
    model(torch.ones(1, 3)).sum().backward()
    rec.step()
print("not reached: SIGTERM's default action ends the process")
"""


def test_a_signal_while_the_trace_closes_waits_until_it_is_closed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_WHILE_CLOSING, str(tmp_path / "t")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]
    assert "not reached" not in done.stdout
    report = validate_trace(tmp_path / "t", deep=True)
    part = report.trace.parts[0].manifest
    assert report.complete and part.ending is not None and part.ending.how == "closed"
