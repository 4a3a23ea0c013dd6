"""Benign differences: kink flips of piecewise operations, and what they explain downstream.

Constraints: no framework import; reads the data of a diverged gradient and of its node's forward
inputs a second time (two tensor pairs at a time), only where a piecewise node's gradient diverged
or a unit consumed an explained tensor; deterministic.

Two correct runs whose forward inputs differ by rounding may take different branches where an
input sits at a kink — a ReLU input within rounding of 0, a max-pool window with tied values — and
the backward pass then routes the gradient differently at those elements. For a backward unit of a
piecewise family (:data:`~tracespec.compare.families.PIECEWISE_FAMILIES`), an element of an input
gradient is a *kink flip* when

- elementwise families with known kink points (:data:`KINK_POINTS`): A's or B's forward input is
  within the input's strict elementwise tolerance of a kink point, or the two lie on different
  sides of it;
- selecting families (:data:`SELECTING_FAMILIES`: max pooling, max/min, top-k, sort): A's forward
  input there ties (within the same tolerance) with the input of *another* element that received
  gradient in A or B, and the gradient's total is conserved (a tie moves gradient, never makes it).

The gradient is then measured again with the flipped elements set to A's values; if the rest
passes, the record passes as benign, with the count and the band. A flip changes the gradient
upstream of the node too (its consumers' gradients, their weight gradients...): a unit that
consumed an explained tensor and whose outputs diverge passes as *inherited from benign
differences* when its relative error (RMSE / scale) stays within :data:`INHERITED_GAIN` times the
largest relative error it consumed; above that it diverges and is named as the culprit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import numpy as np

from tracespec.compare.diagnose import DIVERGED, RecordResult, UnitResult
from tracespec.compare.families import PIECEWISE_FAMILIES, op_family
from tracespec.compare.metrics import compare_arrays, judge
from tracespec.compare.tolerance import Tolerance, TolerancePolicy
from tracespec.compare.view import Record

__all__ = ["INHERITED_GAIN", "KINK_POINTS", "SELECTING_FAMILIES", "BenignExplainer", "benign_differences"]

KINK_POINTS: Final[dict[str, tuple[float, ...]]] = {
    "relu": (0.0,),
    "relu6": (0.0, 6.0),
    "leakyrelu": (0.0,),
    "prelu": (0.0,),
    "abs": (0.0,),
    "sign": (0.0,),
    "hardtanh": (-1.0, 1.0),
    "hardsigmoid": (-3.0, 3.0),
    "hardswish": (-3.0, 3.0),
}
"""Where the derivative of an elementwise piecewise family jumps, at its default parameters."""

SELECTING_FAMILIES: Final = frozenset({"maxpool", "globalmaxpool", "max", "min", "topk", "sort"})
"""Families whose backward routes each output gradient to the selected input element: their kinks
are ties between input elements."""

INHERITED_GAIN: Final = 8.0
"""How much larger a unit's relative error may be than the largest explained error it consumed.
A node's backward maps its output gradient linearly; a few flipped elements grow by about the
node's gain, measured at 2.1x on a correct CNN port (tests/test_compare/test_kinks.py), so 8 leaves
headroom while a bug of 8x the inherited error, or more, is still caught."""

ReadPair = Callable[[Record, Record, Any], "tuple[np.ndarray, np.ndarray]"]


class BenignExplainer:
    """Re-judges the diverged records of a stage's units that kinks or explained inputs account for."""

    def __init__(self, read_pair: ReadPair, policy: TolerancePolicy) -> None:
        self.read_pair = read_pair
        self.policy = policy

    def explain(self, units: list[UnitResult]) -> None:
        """Walk the units of one (step, rank, stage) in execution order, before diagnosis."""
        for unit in units:
            bad = [r for r in unit.outputs if r.status == DIVERGED]
            if not bad or any(r.status == DIVERGED for r in unit.upstream):
                continue
            consumed = max((r.noise["excused_rel_rmse"] for r in unit.upstream if "excused_rel_rmse" in r.noise), default=None)
            families = {op_family(unit.a_class), op_family(unit.b_class)} & PIECEWISE_FAMILIES
            kinky = sorted(families)[0] if families and unit.stage == "backward" else None
            inputs = {r.slot: r for r in unit.upstream if r.role == "input"}
            grad_outputs = {r.slot: r for r in unit.upstream if r.role == "grad_output"}
            for record in bad:
                kink_input = inputs.get(record.slot) if kinky and record.role == "grad_input" else None
                if kinky and record.role == "grad_input" and not _has_data(kink_input):
                    _update(record, {"kinks": "not checked: no forward input data on both sides (capture 'full')"})
                    kink_input = None
                if kink_input is None and consumed is None:
                    continue
                self._explain(
                    unit, record, kinky if kink_input is not None else None, kink_input, grad_outputs.get(record.slot), consumed
                )

    def _explain(
        self,
        unit: UnitResult,
        record: RecordResult,
        family: str | None,
        kink_input: RecordResult | None,
        grad_output: RecordResult | None,
        consumed: float | None,
    ) -> None:
        if record.sources is None or record.metrics is None or record.metrics.kind != "elementwise":
            return
        ra, rb, transform = record.sources
        tolerance = self.policy.tolerance_for(unit.a_route, ra.dtype, rb.dtype)
        scale = record.noise.get("scale")
        rest = record.metrics
        found: dict[str, Any] = {}
        if family is not None and kink_input is not None and kink_input.sources is not None:
            grad_a, grad_b = self.read_pair(ra, rb, transform)
            xa_record, xb_record, x_transform = kink_input.sources
            xa, xb = self.read_pair(xa_record, xb_record, x_transform)
            if xa.shape != grad_a.shape:
                return
            x_tolerance = self.policy.tolerance_for(unit.a_route, xa_record.dtype, xb_record.dtype)
            band = x_tolerance.atol_for(kink_input.noise.get("scale"))
            differing = _beyond(grad_a, grad_b, tolerance, scale)
            flips = _kink_flips(family, xa, xb, grad_a, grad_b, differing, band, tolerance)
            explained = flips
            if family in KINK_POINTS and consumed is not None and _has_data(grad_output):
                # elementwise: an input gradient element depends on its own output gradient element
                # only, so what was inherited is known element by element, and the rest is judged
                # at the usual tolerance (a wrong backward elsewhere fails)
                go_a_record, go_b_record, go_transform = grad_output.sources  # type: ignore[union-attr,misc]
                go_a, go_b = self.read_pair(go_a_record, go_b_record, go_transform)
                if go_a.shape == grad_a.shape:
                    inherited = _beyond(go_a, go_b, tolerance, grad_output.noise.get("scale"))  # type: ignore[union-attr]
                    flips &= ~inherited
                    explained = flips | inherited
                    found["inherited_elements"] = int(np.count_nonzero(inherited & differing))
                    consumed = None
            count = int(np.count_nonzero(flips))
            if np.any(explained):
                rest = compare_arrays(grad_a, np.where(explained, grad_a, grad_b), tolerance, scale)
                where = f"|x - kink| <= {band:.2g}" if family in KINK_POINTS else f"inputs tied within {band:.2g}"
                found["kinks"] = {"family": family, "count": count, "band": band, "route": unit.a_route, "where": where}
        allowed = tolerance.rel_rmse
        if consumed is not None:
            allowed = max(allowed, INHERITED_GAIN * consumed)
        agree = rest.nan_agree and rest.inf_agree
        within = rest.identical or (
            agree and (rest.rel_rmse or 0.0) <= allowed and (consumed is not None or judge(rest, "norm", tolerance) != DIVERGED)
        )
        if not within or not (found or consumed is not None):
            return
        if "inherited_elements" in found:
            found["inherited"] = {"elements": found.pop("inherited_elements")}
        elif consumed is not None:
            found["inherited"] = {"consumed_rel_rmse": consumed, "bound": allowed}
        found["excused_rel_rmse"] = record.metrics.rel_rmse or 0.0
        for shared in record.shared:
            shared.status = "pass_within_tolerance"
        _update(record, found)


def _has_data(result: RecordResult | None) -> bool:
    return (
        result is not None
        and result.sources is not None
        and result.sources[0].array is not None
        and result.sources[1].array is not None
    )


def _update(record: RecordResult, found: dict[str, Any]) -> None:
    """Every result of the same tensor pair says the same (spec: judged once)."""
    for shared in record.shared:
        shared.noise = {**shared.noise, **found}


def _beyond(a: np.ndarray, b: np.ndarray, tolerance: Tolerance, scale: float | None) -> np.ndarray:
    """Elements beyond the strict elementwise tolerance (NaN/Inf disagreements count)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):
        off = np.abs(b64 - a64) > tolerance.atol_for(scale) + tolerance.rtol * np.abs(a64)
    beyond: np.ndarray = off | (np.isnan(a64) != np.isnan(b64))
    return beyond


def _kink_flips(
    family: str,
    xa: np.ndarray,
    xb: np.ndarray,
    grad_a: np.ndarray,
    grad_b: np.ndarray,
    differing: np.ndarray,
    band: float,
    tolerance: Tolerance,
) -> np.ndarray:
    """The differing gradient elements that a kink of ``family`` explains (module docstring)."""
    xa64, xb64 = xa.astype(np.float64), xb.astype(np.float64)
    if family in KINK_POINTS:
        near = np.zeros(xa.shape, bool)
        for point in KINK_POINTS[family]:
            near |= (np.abs(xa64 - point) <= band) | (np.abs(xb64 - point) <= band)
            near |= np.sign(xa64 - point) != np.sign(xb64 - point)
        return differing & near
    if family not in SELECTING_FAMILIES:
        return np.zeros(xa.shape, bool)  # kink points unknown (clip bounds, where's condition): nothing explained
    total_a, total_b = float(grad_a.astype(np.float64).sum()), float(grad_b.astype(np.float64).sum())
    magnitude = float(np.abs(grad_a.astype(np.float64)).sum())
    if abs(total_b - total_a) > tolerance.rel_rmse * magnitude:
        return np.zeros(xa.shape, bool)  # gradient made or lost, not moved: no tie explains that
    candidates = np.sort(xa64[(grad_a != 0) | (grad_b != 0)])
    values = xa64[differing]
    ties = np.searchsorted(candidates, values + band, "right") - np.searchsorted(candidates, values - band, "left")
    flips = np.zeros(xa.shape, bool)
    flips[differing] = ties >= 2  # the element itself and another that took (or gave) its gradient
    return flips


def benign_differences(units: list[UnitResult]) -> list[dict[str, Any]]:
    """The verdict's ``benign`` list: each explained tensor pair once, where it was produced."""
    seen: set[int] = set()
    found = []
    for unit in units:
        for record in (*unit.outputs, *unit.params):
            if "excused_rel_rmse" not in record.noise or id(record.shared) in seen:
                continue
            seen.add(id(record.shared))
            kinks = record.noise.get("kinks")
            entry: dict[str, Any] = {
                "step": unit.step,
                "rank": unit.rank,
                "stage": unit.stage,
                "route": unit.a_route,
                "class_name": unit.a_class,
                "call": unit.call,
                "role": record.role,
                "slot": record.slot,
                "kind": "kinks" if isinstance(kinks, dict) else "inherited",
                "rel_rmse": record.noise["excused_rel_rmse"],
            }
            if isinstance(kinks, dict):
                entry.update(count=kinks["count"], where=kinks["where"])
            found.append(entry)
    return found
