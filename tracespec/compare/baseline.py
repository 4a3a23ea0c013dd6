"""A noise baseline: a second recording of A's side measures the noise floor of every record.

Constraints: no framework import; reads the baseline's tables once per rank and one baseline
tensor per record compared (memory stays at three tensors); a baseline that is not a valid trace
is invalid input (:class:`~tracespec.errors.TracespecError`, exit 3 from the CLI).

``tracespec diff A B --baseline A2``: A2 is A's run again with a harmless change (another thread
count, another device, another run of a non-deterministic kernel, an input perturbed by a rounding).
For each record, ``|A - A2|`` is the noise that change alone makes; B passes where it differs from
A by no more than :data:`BASELINE_FACTOR` times that, norm-wise and element by element (or within
the default tolerance, whichever is looser). Records are found in A2 by route, stage, role, slot and
call: A2 is the same model, so routes are equal.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import Any, Final

import numpy as np

from tracespec.compare.metrics import compare_arrays
from tracespec.compare.tolerance import ELEMENT_SLACK, Tolerance
from tracespec.compare.view import RankView, Record
from tracespec.errors import TableMismatchError, TracespecError
from tracespec.format.dtypes import dtype_of
from tracespec.storage import Trace, load_trace

__all__ = ["BASELINE_FACTOR", "Baseline", "open_baseline"]

BASELINE_FACTOR: Final = 4.0
"""How much more B may differ from A than A2 does. Where B's differences are of the same kind as
A2's (independent roundings of the same size), ``|B - A|`` is about ``|A2 - A|`` norm-wise (sqrt 2
at most for two independent runs against a third); the worst element of a tensor varies more
from run to run, and 4 covers both while a bug of 4x the measured noise still fails."""

_RecordKey = tuple[str, str, str, str, "int | None"]


def open_baseline(path: Trace | str | os.PathLike[str]) -> Trace:
    """The baseline trace (a :class:`~tracespec.errors.TracespecError` names it if it is not one)."""
    if isinstance(path, Trace):
        return path
    try:
        return load_trace(path)
    except TracespecError as exc:  # say which of the three inputs it is (errors take one message)
        raise type(exc)(f"baseline: {exc}") from None


class Baseline:
    """The noise floor of A's records on one rank, measured against A2's."""

    def __init__(self, trace: Trace, rank: int, steps: list[int], view_a: RankView) -> None:
        self.trace, self.rank = trace, rank
        self.view_a = view_a
        self.used = 0
        """Records whose tolerance came from the baseline (data on all three sides)."""
        self.view = RankView(trace, rank, steps) if rank in trace.ranks else None
        self._step = -1
        self._records: dict[_RecordKey, Record] = {}

    def _record(self, ra: Record) -> Record | None:
        """A2's record for ``ra``: indexed one step at a time (the comparison walks steps in order)."""
        if self.view is None:
            return None
        if ra.step != self._step:
            self._step, self._records = ra.step, {}
            for (stage, node), records in self.view.step_records(ra.step).items():
                route = self.view.nodes[node].route
                for record in records:
                    self._records[(stage, route, record.role, record.slot, record.call)] = record
        return self._records.get((ra.stage, self.view_a.nodes[ra.node].route, ra.role, ra.slot, ra.call))

    def widen(
        self, ra: Record, a: np.ndarray, tolerance: Tolerance, scale: float | None, mode: str
    ) -> tuple[Tolerance, dict[str, Any] | None]:
        """``tolerance`` widened to the noise A2 shows on ``ra`` (data ``a``), and what was measured."""
        other = self._record(ra)
        if other is None or other.array is None or other.shape != ra.shape or other.dtype != ra.dtype:
            return tolerance, None
        a2 = self.trace.read(self.rank, other.array)
        if a2.shape != other.shape or dtype_of(a2).name != other.dtype:
            raise TableMismatchError(
                f"baseline {self.trace.path}: rank_{self.rank} tensor {other.id} says {other.dtype}{list(other.shape or [])}, "
                f"its array holds {dtype_of(a2).name}{list(a2.shape)}; the trace is corrupt (tracespec validate tells more)"
            )
        noise = compare_arrays(a, a2, tolerance, scale)
        self.used += 1
        if noise.identical or not noise.rmse or scale is None or scale <= 0 or not math.isfinite(noise.rmse):
            return tolerance, {"rel_rmse": 0.0, "max_abs": 0.0}
        rel_rmse = noise.rmse / scale
        max_abs = noise.max_abs or 0.0
        # the element bound of mode norm is ELEMENT_SLACK times atol (+ rtol |a|): divide it back out
        element_slack = ELEMENT_SLACK if mode == "norm" else 1.0
        atol = max(tolerance.atol_for(scale), BASELINE_FACTOR * max_abs / element_slack)
        widened = replace(tolerance, rel_rmse=max(tolerance.rel_rmse, BASELINE_FACTOR * rel_rmse), atol=atol, atol_scaled=False)
        return widened, {"rel_rmse": rel_rmse, "max_abs": max_abs}
