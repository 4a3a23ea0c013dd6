"""``assert_matches``: a test that fails with the verdict's paragraph when two runs disagree.

Constraints: no framework import (a candidate or reference is a trace, a folder or a recorder that
has finished); the reference is A, the candidate B, as in ``tracespec diff REFERENCE CANDIDATE``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tracespec.compare import Verdict, compare_traces
from tracespec.compare.calls import LOW_COVERAGE
from tracespec.report import write_html
from tracespec.storage import Trace, load_trace

__all__ = ["TraceMismatch", "assert_matches"]

TraceLike = Trace | str | os.PathLike[str] | Any
"""A :class:`Trace`, a trace folder, or a finished recorder (anything with a ``path``)."""


class TraceMismatch(AssertionError):
    """The candidate run does not match the reference: the message is the verdict's paragraph."""

    def __init__(self, message: str, verdict: Verdict, report: Path | None) -> None:
        super().__init__(message)
        self.verdict = verdict
        self.report = report


def _trace(value: TraceLike) -> Trace:
    if isinstance(value, Trace):
        return value
    path = getattr(value, "path", value)  # a recorder: the trace it wrote
    return load_trace(path)


def assert_matches(
    candidate: TraceLike,
    reference: TraceLike,
    *,
    report: str | os.PathLike[str] | None = None,
    min_coverage: float = LOW_COVERAGE,
    **compare_options: Any,
) -> Verdict:
    """Compare ``candidate`` with ``reference`` (the trusted run) and return the verdict; raise
    :class:`TraceMismatch` (an ``AssertionError``) when they diverge, when either trace is
    incomplete, or when less than ``min_coverage`` of the reference's leaf calls could be compared.

    ``report`` names an HTML file written when the check fails (its path ends the message).
    ``compare_options`` are those of :func:`tracespec.compare` (``rtol=``, ``layer_map=``, ``steps=``...).
    """
    __tracebackhide__ = True  # pytest shows the caller's line and the message, not this function
    trace_a, trace_b = _trace(reference), _trace(candidate)
    verdict = compare_traces(trace_a, trace_b, **compare_options)
    problems = [] if verdict.passed else [verdict.describe()]
    for name, trace in (("reference", trace_a), ("candidate", trace_b)):
        if not trace.complete:
            problems.append(
                f"the {name} trace {trace.path} is INCOMPLETE (a writer did not close): only what both hold was compared"
            )
    low = {
        rank: cov["calls"]["fraction_a"]
        for rank, cov in verdict.coverage["ranks"].items()
        if cov["calls"]["fraction_a"] < min_coverage
    }
    if low:
        shares = ", ".join(f"rank {rank}: {share:.0%}" for rank, share in low.items())
        problems.append(
            f"LOW COVERAGE: only {shares} of the reference's leaf calls could be compared "
            f"(min_coverage={min_coverage:g}); see the verdict's 'unmatched', or pass a layer_map"
        )
    if not problems:
        return verdict
    written = None
    if report is not None:
        written = write_html(report, verdict.to_json(), trace_a, trace_b)
    message = "\n".join(problems) + (f"\nHTML report: {written}" if written else "")
    raise TraceMismatch(message, verdict, written)
