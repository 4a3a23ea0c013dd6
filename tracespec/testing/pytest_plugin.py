"""The tracespec pytest plugin (entry point ``pytest11``): golden traces for "my model still
computes what it did" and "my port matches the reference" tests.

    def test_port_matches(tracespec_golden):
        with tracespec_golden.record(model):
            model(x).sum().backward()

The first run records the golden trace under ``tests/golden/<test file>/<test name>/`` (ini
option ``tracespec_golden_dir``) and fails, asking for it to be checked in; ``pytest
--tracespec-update`` records every golden again. Later runs record into a temporary folder and
compare with the golden trace, failing with the verdict's paragraph.
``--tracespec-report DIR`` writes an HTML report of each failing comparison to DIR.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import tracespec
from tracespec.testing.matching import assert_matches

GOLDEN_CAPTURE = "stats"
"""Goldens keep statistics, not data, unless a test asks otherwise: a few KB per module call, small
enough to commit, and enough to localise a divergence."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tracespec", "tracespec golden traces")
    group.addoption(
        "--tracespec-update",
        action="store_true",
        default=False,
        help="record the golden traces again (replacing them) instead of comparing with them",
    )
    group.addoption(
        "--tracespec-report", metavar="DIR", default=None, help="write an HTML report of each failing golden comparison into DIR"
    )
    parser.addini("tracespec_golden_dir", "folder of golden traces, relative to the rootdir", default="tests/golden")


def _test_folder(nodeid: str) -> Path:
    """``tests/test_port.py::TestX::test_y[cpu]`` -> ``test_port/TestX/test_y[cpu]``: one folder per test."""
    file, _, name = nodeid.partition("::")
    parts = [Path(file).stem, *name.split("::")]
    return Path(*(re.sub(r"[^\w.\[\]=,+-]", "_", part) for part in parts))


class Golden:
    """What the ``tracespec_golden`` fixture gives a test: :meth:`record` a run against the golden trace."""

    def __init__(self, request: pytest.FixtureRequest, scratch: Path) -> None:
        config = request.config
        self.root = Path(config.rootpath) / config.getini("tracespec_golden_dir")
        self.folder = self.root / _test_folder(request.node.nodeid)
        self.update = bool(config.getoption("tracespec_update"))
        report_dir = config.getoption("tracespec_report")
        self._report = (
            Path(report_dir) / f"{_test_folder(request.node.nodeid).as_posix().replace('/', '.')}.html" if report_dir else None
        )
        self._scratch = scratch
        self._runs = 0

    @contextmanager
    def record(
        self,
        model: Any,
        *,
        name: str | None = None,
        golden: str | None = None,
        compare: Mapping[str, Any] | None = None,
        **record_options: Any,
    ) -> Iterator[Any]:
        """Record what the ``with`` block runs on ``model`` (options of :func:`tracespec.record`;
        ``capture`` defaults to ``"stats"``), then compare it with this test's golden trace: the
        test's folder, its subfolder ``name`` (for several goldens in one test), or ``golden``, a
        folder under the golden root shared with another test (``"test_model/test_reference"``: a
        port's test against the reference's golden). ``compare``: options of :func:`tracespec.compare`. With ``--tracespec-update`` the
        recording becomes the golden trace; without a golden trace it does too, and the test fails
        saying so (a golden that was never committed must not pass unnoticed)."""
        __tracebackhide__ = True
        folder = self.root / golden if golden else self.folder / name if name else self.folder
        record_options.setdefault("capture", GOLDEN_CAPTURE)
        create = self.update or not folder.exists()
        if create:
            shutil.rmtree(folder, ignore_errors=True)
            folder.parent.mkdir(parents=True, exist_ok=True)
            target = folder
        else:
            self._runs += 1
            target = self._scratch / f"run-{self._runs}"
        with tracespec.record(model, target, **record_options) as recorder:
            yield recorder
        if create:
            if not self.update:
                pytest.fail(
                    f"no golden trace at {folder}: recorded it now from this run; check that it is right, "
                    "commit it and run again (pytest --tracespec-update records every golden again)",
                    pytrace=False,
                )
            return
        if self._report is not None:
            self._report.parent.mkdir(parents=True, exist_ok=True)
        assert_matches(target, folder, report=self._report, **dict(compare or {}))


@pytest.fixture
def tracespec_golden(request: pytest.FixtureRequest, tmp_path: Path) -> Golden:
    """Record the code under test and compare it with this test's golden trace (see :class:`Golden`)."""
    return Golden(request, tmp_path)
