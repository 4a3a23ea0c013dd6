"""Tolerances: when is a difference between two tensors noise, and when is it a bug.

Constraints: pure values; no framework import. Defaults depend on the dtype (what is rounding noise
for bfloat16 is a bug for float32): where A and B hold different dtypes, the coarser one decides.

A tensor element ``b`` passes against its reference ``a`` (A is the reference) when
``|b - a| <= atol + rtol * |a|``. The default ``atol`` is *relative to a scale*: it is multiplied by
the larger of the reference tensor's RMS and the median RMS of the tensors of the same kind
(activations, gradients, parameter gradients...) in the same step and stage. So small gradients
are held to the same relative standard as large activations, while a tensor that is mathematically
zero and numerically noise (the gradient of an attention key's bias) is judged against the size of
its peers. An ``atol`` given by the user (``--atol``) is absolute.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import ml_dtypes
import numpy as np

from tracespec.errors import UsageError
from tracespec.format.dtypes import parse_dtype

__all__ = ["DEFAULT_TOLERANCES", "MODES", "Tolerance", "TolerancePolicy", "coarser_dtype"]

MODES: Final = ("strict", "mean", "stats", "bitwise")
"""``strict``: every element within tolerance, NaN/Inf at the same places; ``mean``: the mean
absolute error within tolerance of the mean magnitude; ``stats``: compare recorded statistics only
(reads no tensor data); ``bitwise``: identical bits (content hash) only."""


@dataclass(frozen=True, slots=True)
class Tolerance:
    """``rtol`` and ``atol``; ``atol_scaled``: ``atol`` is in units of the reference's RMS."""

    rtol: float
    atol: float
    atol_scaled: bool = True

    def atol_for(self, reference_rms: float | None) -> float:
        """The absolute tolerance for a reference tensor of RMS ``reference_rms``."""
        if not self.atol_scaled:
            return self.atol
        scale = reference_rms if reference_rms is not None and math.isfinite(reference_rms) else 1.0
        return self.atol * max(scale, 1e-30)

    def to_json(self) -> dict[str, Any]:
        return {"rtol": self.rtol, "atol": self.atol, "atol_scaled": self.atol_scaled}


_EXACT: Final = Tolerance(0.0, 0.0, False)

DEFAULT_TOLERANCES: Final[dict[str, Tolerance]] = {
    "float64": Tolerance(1e-7, 1e-7),
    "complex128": Tolerance(1e-7, 1e-7),
    "float32": Tolerance(1.3e-6, 1e-5),
    "complex64": Tolerance(1.3e-6, 1e-5),
    "float16": Tolerance(1e-3, 1e-3),
    "bfloat16": Tolerance(1.6e-2, 1e-2),
    "float8_e4m3fn": Tolerance(0.125, 0.125),
    "float8_e4m3fnuz": Tolerance(0.125, 0.125),
    "float8_e5m2": Tolerance(0.25, 0.25),
    "float8_e5m2fnuz": Tolerance(0.25, 0.25),
}
"""float32 follows ``torch.testing.assert_close`` (rtol 1.3e-6, atol 1e-5, here times the RMS):
loose enough for a matmul computed in another order, tight enough for a changed LayerNorm epsilon.
Lower precisions allow about one rounding step (their machine epsilon). Integers and bool: exact."""


def _mantissa_bits(dtype: str) -> int:
    numpy_dtype = parse_dtype(dtype).numpy
    if numpy_dtype.kind == "c":
        numpy_dtype = np.dtype(np.float32 if numpy_dtype.itemsize == 8 else np.float64)
    if numpy_dtype.kind == "f" or dtype in DEFAULT_TOLERANCES:
        return int(ml_dtypes.finfo(numpy_dtype).nmant)
    return 1 << 10  # integers and bool: "finer" than any float, compared exactly


def coarser_dtype(a: str, b: str) -> str:
    """Of two dtypes, the one with fewer mantissa bits (A's when equal)."""
    return b if _mantissa_bits(b) < _mantissa_bits(a) else a


def _check_override(route: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(spec) - {"rtol", "atol", "mode"}
    if unknown:
        raise UsageError(f"tolerance override for {route!r}: unknown keys {sorted(unknown)}; use rtol, atol, mode")
    if "mode" in spec and spec["mode"] not in MODES:
        raise UsageError(f"tolerance override for {route!r}: mode {spec['mode']!r} is not one of {MODES}")
    return dict(spec)


@dataclass(frozen=True, slots=True)
class TolerancePolicy:
    """Which tolerance and mode apply to a tensor of a given route and dtype."""

    mode: str = "strict"
    rtol: float | None = None
    atol: float | None = None
    overrides: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @classmethod
    def build(
        cls,
        mode: str = "strict",
        rtol: float | None = None,
        atol: float | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> TolerancePolicy:
        if mode not in MODES:
            raise UsageError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        for name, value in (("rtol", rtol), ("atol", atol)):
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise UsageError(f"{name} must be a finite number >= 0, not {value!r}")
        checked = tuple(
            (route, tuple(sorted(_check_override(route, spec).items()))) for route, spec in (overrides or {}).items()
        )
        return cls(mode, rtol, atol, checked)

    def _override(self, route: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for pattern, spec in self.overrides:
            if fnmatch.fnmatchcase(route, pattern):
                found.update(dict(spec))  # later overrides win
        return found

    def mode_for(self, route: str) -> str:
        return str(self._override(route).get("mode", self.mode))

    def _base(self, dtype: str) -> Tolerance:
        base = DEFAULT_TOLERANCES.get(dtype, _EXACT)
        if self.rtol is not None:
            base = replace(base, rtol=self.rtol)
        if self.atol is not None:
            base = replace(base, atol=self.atol, atol_scaled=False)
        return base

    def tolerance_for(self, route: str, dtype_a: str | None, dtype_b: str | None) -> Tolerance:
        """The tolerance for a tensor of ``route`` recorded as ``dtype_a`` in A, ``dtype_b`` in B."""
        dtype = coarser_dtype(dtype_a, dtype_b) if dtype_a and dtype_b else (dtype_a or dtype_b or "float32")
        base = self._base(dtype)
        override = self._override(route)
        if "rtol" in override:
            base = replace(base, rtol=float(override["rtol"]))
        if "atol" in override:
            base = replace(base, atol=float(override["atol"]), atol_scaled=False)
        return base

    def to_json(self, dtypes: list[str]) -> dict[str, Any]:
        """What the verdict reports: the mode, the tolerance per dtype seen, and the overrides."""
        return {
            "mode": self.mode,
            "rtol": self.rtol,
            "atol": self.atol,
            "by_dtype": {d: self._base(d).to_json() for d in sorted(dtypes)},
            "overrides": [{"route": route, **dict(spec)} for route, spec in self.overrides],
        }
