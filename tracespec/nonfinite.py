"""Where NaN and Inf first appear in a trace: the call that produced them from finite inputs.

Constraints:
- Reads only the tables (``nan_count``, ``inf_count``): works on ``stats`` and ``full`` traces
  alike and reads no tensor data. Records without statistics (level ``hash``) count as finite.
- Execution order over steps: step by step; within a step the forward calls by the event at
  which they returned (a module's output exists when its call ends, so an inner module comes
  before the one that called it), then the backward calls the same way.
- A forward call *introduces* a non-finite value when an output holds one and no input does; a
  backward call when a gradient with respect to an input (``grad_input``) does and no gradient
  with respect to an output (``grad_output``) does. A module's parameter gradients count as
  outputs of its last backward call of the step, when they are final. Inputs that were not
  recorded count as finite.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Final

import pyarrow.compute as pc

from tracespec.storage import Trace

__all__ = ["NonFiniteOrigin", "first_nonfinite"]

_SIDES: Final = {
    "forward": (frozenset({"input"}), frozenset({"output"})),
    "backward": (frozenset({"grad_output"}), frozenset({"grad_input", "parameter_grad"})),
}
_COLUMNS: Final = ["step", "stage", "node", "call", "role", "slot", "nan_count", "inf_count"]


@dataclass(frozen=True, slots=True)
class NonFiniteOrigin:
    """The first call whose output (forward) or input gradient (backward) holds NaN or Inf while
    what it received did not.

    ``records`` are its non-finite outputs: dicts with ``role``, ``slot``, ``nan_count`` and
    ``inf_count``.
    """

    rank: int
    step: int
    stage: str
    route: str
    class_name: str
    call: int
    records: tuple[dict[str, Any], ...]

    def describe(self) -> str:
        """One line: where, and what holds the non-finite values."""
        where = self.route or "(root)"
        found = ", ".join(f"{r['role']}[{r['slot']}] nan={r['nan_count']} inf={r['inf_count']}" for r in self.records)
        received = "inputs" if self.stage == "forward" else "output gradients"
        return (
            f"step {self.step}, {self.stage}, {where} ({self.class_name}, call {self.call}), rank {self.rank}: "
            f"{found}; its {received} were finite"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "step": self.step,
            "stage": self.stage,
            "route": self.route,
            "class_name": self.class_name,
            "call": self.call,
            "records": list(self.records),
        }


def first_nonfinite(trace: Trace, rank: int | None = None) -> NonFiniteOrigin | None:
    """The first call, in execution order, that turned finite values into NaN or Inf.

    ``rank``: the rank to search; by default every rank, and the earliest step wins (ties go to
    the lower rank). None when no recorded call introduced a non-finite value (there may still be
    some, received from the model's inputs or from calls that were not recorded).
    """
    found = [origin for r in (trace.ranks if rank is None else [rank]) if (origin := _first_in_part(trace, r)) is not None]
    return min(found, key=lambda o: (o.step, o.rank), default=None)


def _first_in_part(trace: Trace, rank: int) -> NonFiniteOrigin | None:
    part = trace.parts[rank]
    tensors = part.tensors.select(_COLUMNS)
    bad = pc.or_(
        pc.greater(pc.fill_null(tensors.column("nan_count"), 0), 0), pc.greater(pc.fill_null(tensors.column("inf_count"), 0), 0)
    )
    if not pc.any(bad).as_py():
        return None
    first_bad_step = pc.min(pc.filter(tensors.column("step"), bad)).as_py()
    tensors = tensors.filter(pc.greater_equal(tensors.column("step"), first_bad_step))
    calls = part.calls.filter(pc.greater_equal(part.calls.column("step"), first_bad_step))
    records: dict[tuple[int, str, int, int | None], list[dict[str, Any]]] = defaultdict(list)
    for row in tensors.to_pylist():
        records[(row["step"], row["stage"], row["node"], row["call"])].append(row)
    nodes = {n["node"]: n for n in part.nodes.select(["node", "route", "class_name"]).to_pylist()}
    order = {"forward": 0, "backward": 1}
    ordered = sorted(
        (c for c in calls.to_pylist() if c["stage"] in order),
        key=lambda c: (c["step"], order[c["stage"]], c["end"]),
    )
    last_backward = {(c["step"], c["node"]): c["call"] for c in ordered if c["stage"] == "backward"}
    for c in ordered:
        key = (c["step"], c["stage"], c["node"], c["call"])
        rows = records.get(key, [])
        if c["stage"] == "backward" and last_backward[(c["step"], c["node"])] == c["call"]:
            rows = rows + records.get((c["step"], "backward", c["node"], None), [])
        received, produced = _SIDES[c["stage"]]
        if any(_nonfinite(r) for r in rows if r["role"] in received):
            continue  # it inherited them
        culprits = tuple(
            {k: r[k] for k in ("role", "slot", "nan_count", "inf_count")} for r in rows if r["role"] in produced and _nonfinite(r)
        )
        if culprits:
            node = nodes[c["node"]]
            return NonFiniteOrigin(rank, c["step"], c["stage"], node["route"], node["class_name"], c["call"], culprits)
    return None


def _nonfinite(row: dict[str, Any]) -> bool:
    return bool(row["nan_count"] or row["inf_count"])
