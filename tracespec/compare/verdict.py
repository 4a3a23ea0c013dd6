"""The verdict of a comparison, as a value and as JSON (``spec/v1/verdict.md``).

Constraints: the JSON is deterministic (same inputs and options give the same bytes: no timestamps,
no timings, fixed key order, floats as Python prints them, non-finite numbers as ``null``); it
validates against ``spec/v1/schema/verdict.schema.json``; the verdict has its own version, separate
from the trace format's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import cache
from importlib import resources
from pathlib import PurePath
from typing import Any, Final

import jsonschema
import pyarrow as pa

from tracespec.errors import TracespecError, UsageError

__all__ = [
    "VERDICT_VERSION",
    "Verdict",
    "VerdictInvalidError",
    "culprit_units",
    "describe_metrics",
    "describe_side",
    "format_number",
    "source_line",
    "validate_verdict",
]

VERDICT_VERSION: Final = "1.3"
VERDICT_SCHEMA: Final = "verdict.schema.json"


class VerdictInvalidError(TracespecError, ValueError):
    """A verdict document does not conform to the verdict schema."""

    reason = "verdict_invalid"


_TABLE_METRICS: Final = ("max_abs", "max_rel", "rel_rmse", "cosine", "max_ulp", "tolerance_ratio", "mismatched", "count")
_TABLE_SCHEMA: Final = pa.schema(
    [(name, pa.int64()) for name in ("step", "rank")]
    + [("stage", pa.string()), ("call", pa.int64())]
    + [
        (name, pa.string())
        for name in (
            "route_a",
            "route_b",
            "class_name",
            "alignment",
            "unit_status",
            "divergence",
            "role",
            "slot",
            "status",
            "dtype_a",
            "dtype_b",
            "metrics_kind",
        )
    ]
    + [(name, pa.float64()) for name in _TABLE_METRICS]
)
"""The columns of :meth:`Verdict.to_arrow`."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Where two traces diverge, with the evidence. ``status`` is ``"pass"`` or ``"fail"``."""

    verdict_version: str
    status: str
    a: dict[str, Any]
    b: dict[str, Any]
    selection: dict[str, Any]
    tolerances: dict[str, Any]
    first_divergence: dict[str, Any] | None
    coverage: dict[str, Any]
    summary: dict[str, Any]
    nodes: list[dict[str, Any]]
    worst: list[dict[str, Any]]
    error_growth: list[dict[str, Any]]
    unmatched: list[dict[str, Any]]
    hint: str
    benign: list[dict[str, Any]] = field(default_factory=list)
    """Differences judged benign (verdict 1.1): kink flips, and what inherited them."""
    steps: list[dict[str, Any]] = field(default_factory=list)
    """Divergence over time (verdict 1.3): per step compared, its record pairs, how many diverged,
    the worst ratio to tolerance and the first unit that diverged."""

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def __bool__(self) -> bool:
        return self.passed

    def to_json(self) -> dict[str, Any]:
        return {"format": "tracespec-verdict", **{f.name: getattr(self, f.name) for f in fields(self)}}

    def dumps(self, indent: int | None = 1) -> str:
        """The verdict as deterministic JSON text."""
        return json.dumps(self.to_json(), indent=indent, allow_nan=False, ensure_ascii=False) + "\n"

    def describe(self) -> str:
        """One paragraph: pass, or where B first diverged, how much, and what to look at next."""
        first = self.first_divergence
        coverage = [cov["calls"]["fraction_a"] for cov in self.coverage.get("ranks", {}).values()]
        compared = f" in the {min(coverage):.0%} of A's leaf calls compared" if coverage and min(coverage) < 1 else ""
        if first is None:
            return f"PASS: B agrees with A{compared} ({self.summary['units']} calls, {self.coverage['records_compared']} tensor pairs)."
        kind = "introduced it" if first["kind"] == "introduced" else "inherited it"
        text = (
            f"FAIL: first divergence in {first['stage']}, step {first['step']}, rank {first['rank']}: "
            f"{describe_side(first['a'])} {kind}"
        )
        if first["b"]["route"] != first["a"]["route"] or "routes" in first["b"]:
            text += f" (in B: {describe_side(first['b'])})"
        if first.get("record"):
            text += f"; {first['record']['role']}[{first['record']['slot']}]: {describe_metrics(first.get('metrics'), self.tolerances)}"
        if first.get("evidence"):
            text += f"; {first['evidence']}"
        where = source_line(first["a"])
        if where:
            text += f"; code: {where}"
        return f"{text}. Next: {self.hint}"

    def to_arrow(self) -> pa.Table:
        """One row per compared record pair: where (step, rank, stage, routes, call), how its unit
        was aligned and judged, and the record's own status and metrics; a table to filter."""
        rows = []
        for unit in self.nodes:
            for record in unit.get("records", []):
                metrics = record.get("metrics") or {}
                rows.append(
                    {
                        "step": unit["step"],
                        "rank": unit["rank"],
                        "stage": unit["stage"],
                        "call": unit["call"],
                        "route_a": unit["a"]["route"],
                        "route_b": unit["b"]["route"],
                        "class_name": unit["a"]["class_name"],
                        "alignment": unit.get("alignment"),
                        "unit_status": unit["status"],
                        "divergence": unit.get("divergence"),
                        "role": record["role"],
                        "slot": record["slot"],
                        "status": record["status"],
                        "dtype_a": record.get("dtype_a"),
                        "dtype_b": record.get("dtype_b"),
                        "metrics_kind": metrics.get("kind"),
                        **{name: metrics.get(name) for name in _TABLE_METRICS},
                    }
                )
        return pa.Table.from_pylist(rows, schema=_TABLE_SCHEMA)

    def to_pandas(self) -> Any:
        """:meth:`to_arrow` as a pandas DataFrame (needs pandas: ``pip install pandas``)."""
        try:
            import pandas  # noqa: F401  (pyarrow's conversion needs it)
        except ImportError:
            raise UsageError("Verdict.to_pandas() needs pandas: pip install pandas (or use Verdict.to_arrow())") from None
        return self.to_arrow().to_pandas()

    def _repr_html_(self) -> str:
        # Jupyter's display: the report layer draws it (the verdict only dispatches to it)
        from tracespec.report.notebook import verdict_fragment

        return verdict_fragment(self.to_json())

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Verdict:
        """Read a verdict document back (validated against the schema)."""
        validate_verdict(doc)
        return cls(**{f.name: doc[f.name] for f in fields(cls) if f.name in doc})  # 1.0 has no ``benign``, 1.1 no ``steps``


@cache
def _schema() -> dict[str, Any]:
    text = resources.files("tracespec.schema").joinpath(VERDICT_SCHEMA).read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def validate_verdict(doc: object) -> None:
    """Raise :class:`VerdictInvalidError` if ``doc`` is not a valid verdict document."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(doc))
    if error is not None:
        location = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise VerdictInvalidError(f"verdict: at {location}: {error.message}")


def culprit_units(doc: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The units of the first divergence's (step, rank, stage) by A's route (a node's first call),
    and the routes from the root down to the culprit: what the path to it is drawn from."""
    first = doc["first_divergence"]
    by_route: dict[str, dict[str, Any]] = {}
    for unit in doc["nodes"]:
        if (unit["step"], unit["rank"], unit["stage"]) == (first["step"], first["rank"], first["stage"]):
            by_route.setdefault(unit["a"]["route"], unit)
    target = first["a"]["route"]
    chain = sorted(
        (r for r in by_route if r == "" or r == target or target.startswith(r + ".")), key=lambda r: (r != "", r.count("."))
    )
    return by_route, chain


def format_number(value: float | None) -> str:
    """Three significant digits, ``-`` for none."""
    return "-" if value is None else f"{value:.3g}"


def describe_metrics(metrics: dict[str, Any] | None, tolerances: dict[str, Any]) -> str:
    """A record's metrics in one line, for people."""
    if not metrics:
        return "no metrics"
    if metrics["kind"] == "hash":
        return "identical bits" if metrics["identical"] else "content hashes differ"
    if metrics["kind"] == "stats":
        delta = ", ".join(f"Δ{k} {format_number(v)}" for k, v in metrics.get("stats_delta", {}).items())
        return f"statistics only: {delta}; ×{format_number(metrics.get('tolerance_ratio'))} of tolerance"
    if metrics["kind"] != "elementwise":
        return str(metrics.get("note", "not compared"))
    norm_bound = tolerances["by_dtype"].get(metrics.get("ulp_dtype"), {}).get("rel_rmse")
    shown_bound = f" (norm tolerance {format_number(norm_bound)})" if tolerances["mode"] == "norm" and norm_bound else ""
    text = (
        f"max abs {format_number(metrics['max_abs'])}, max rel {format_number(metrics['max_rel'])}, "
        f"rel RMSE {format_number(metrics['rel_rmse'])}{shown_bound}, cosine {format_number(metrics['cosine'])}"
    )
    if metrics.get("max_ulp") is not None:
        text += f", {metrics['max_ulp']:.0f} ULP ({metrics['ulp_dtype']})"
    if metrics.get("mismatched"):
        text += (
            f"; {metrics['mismatched']}/{metrics['count']} elements beyond the elementwise tolerance"
            f" (worst ×{format_number(metrics['tolerance_ratio'])} at {metrics['worst_index']}:"
            f" A {metrics['worst_a']:.7g}, B {metrics['worst_b']:.7g})"
        )
    if not (metrics["nan_agree"] and metrics["inf_agree"]):
        text += "; NaN/Inf at different positions"
    return text


def describe_side(side: dict[str, Any]) -> str:
    """``conv1 (Conv2d)``; a group: ``conv1 + bn1 (Conv2d, BatchNorm2d)`` by its routes; an op:
    ``blocks.3.attn → mul at model.py:77 (blocks.3.attn.mul#0)``, the module whose code calls it."""
    routes = side.get("routes")
    if routes and len(routes) > 1:
        return " + ".join(r or "(root)" for r in routes) + f" (fused group, ending at {side['class_name']})"
    site = side.get("op_site")
    if site is not None:
        return f"{site['module'] or '(root)'} → {side['class_name']}{_at(site)} ({side['route']})"
    return f"{side['route'] or '(root)'} ({side['class_name']})"


def _at(site: dict[str, Any]) -> str:
    source = site.get("source")
    return f" at {PurePath(source['file']).name}:{source['line']}" if source else ""


def source_line(side: dict[str, Any]) -> str | None:
    """Where the forward code calls an op, in full: ``/src/model.py:77 in forward``."""
    source = (side.get("op_site") or {}).get("source")
    if source is None:
        return None
    return f"{source['file']}:{source['line']}" + (f" in {source['function']}" if source.get("function") else "")
