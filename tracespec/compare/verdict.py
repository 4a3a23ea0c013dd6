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
from typing import Any, Final

import jsonschema

from tracespec.errors import TracespecError

__all__ = ["VERDICT_VERSION", "Verdict", "VerdictInvalidError", "validate_verdict"]

VERDICT_VERSION: Final = "1.2"
VERDICT_SCHEMA: Final = "verdict.schema.json"


class VerdictInvalidError(TracespecError, ValueError):
    """A verdict document does not conform to the verdict schema."""

    reason = "verdict_invalid"


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
    """Divergence over time (verdict 1.2): per step compared, its record pairs, how many diverged,
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
