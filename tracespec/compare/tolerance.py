"""Tolerances: when is a difference between two tensors noise, and when is it a bug.

Constraints: pure values; no framework import. Defaults depend on the dtype (what is rounding noise
for bfloat16 is a bug for float32): where A and B hold different dtypes, the coarser one decides.

Every tensor is measured against a *scale*: the larger of the reference tensor's RMS and the median
RMS of the tensors of the same kind (activations, gradients, parameter gradients...) in the same
step and stage. So small gradients are held to the same relative standard as large activations,
while a tensor that is mathematically zero and numerically noise (the gradient of an attention
key's bias) is judged against the size of its peers.

- Mode ``norm`` (the default) judges a tensor as a whole: ``RMSE(b - a) / scale <= rel_rmse`` (a
  norm-wise relative error, at the dtype's noise level), and every element within a bound
  :data:`ELEMENT_SLACK` times looser than the strict one (only a gross local error fails there).
  Norm-wise errors of two correct implementations stay small whatever the summation order, the
  kernel fusion or the tensor size; the worst of N elements does not (it grows with N and with
  cancellation), which is why the elementwise bound is loose.
- Mode ``strict``: every element ``b`` within ``|b - a| <= atol + rtol * |a|``, the default
  ``atol`` times the scale. An ``atol`` given by the user (``--atol``) is absolute.
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

__all__ = [
    "DEFAULT_MODE",
    "DEFAULT_TOLERANCES",
    "ELEMENT_SLACK",
    "MAX_REL_RMSE",
    "MODES",
    "NOISE_UNITS",
    "Tolerance",
    "TolerancePolicy",
    "coarser_dtype",
]

MODES: Final = ("norm", "strict", "mean", "stats", "bitwise")
"""``norm``: the norm-wise relative error (RMSE / scale) within ``rel_rmse`` and every element within
:data:`ELEMENT_SLACK` times the strict bound; ``strict``: every element within tolerance; ``mean``:
the mean absolute error within tolerance of the mean magnitude; ``stats``: compare recorded
statistics only (reads no tensor data); ``bitwise``: identical bits (content hash) only. All but
``stats`` and ``bitwise`` also want NaN/Inf at the same places."""

DEFAULT_MODE: Final = "norm"

ELEMENT_SLACK: Final = 256.0
"""How much looser than the strict elementwise bound (``atol + rtol * |a|``) one element may stray in
mode ``norm``. Measured on BERT (all-MiniLM-L6-v2), the worst element of a correct port reaches
~6x the strict bound in float32 gradients and ~100x in bfloat16 gradients (errors of a gradient
element that sums cancelling terms are heavy-tailed); 256 leaves headroom and still fails one
element off by 2.6e-3 of the scale in float32 (2.6 times the scale in bfloat16), an error that a
norm over many elements could dilute."""


@dataclass(frozen=True, slots=True)
class Tolerance:
    """``rtol`` and ``atol`` (elementwise); ``atol_scaled``: ``atol`` is in units of the scale;
    ``rel_rmse``: the largest RMSE / scale of mode ``norm``."""

    rtol: float
    atol: float
    rel_rmse: float = 0.0
    atol_scaled: bool = True

    def atol_for(self, reference_rms: float | None) -> float:
        """The absolute tolerance for a reference tensor of RMS ``reference_rms``."""
        if not self.atol_scaled:
            return self.atol
        scale = reference_rms if reference_rms is not None and math.isfinite(reference_rms) else 1.0
        return self.atol * max(scale, 1e-30)

    def to_json(self) -> dict[str, Any]:
        return {"rtol": self.rtol, "atol": self.atol, "atol_scaled": self.atol_scaled, "rel_rmse": self.rel_rmse}


_EXACT: Final = Tolerance(0.0, 0.0, 0.0, False)

NOISE_UNITS: Final = 128
"""The norm-wise bound of mode ``norm`` in units of the dtype's unit roundoff u = 2^-(mantissa bits
+ 1): two correct implementations differ by a few u per reduction, ~sqrt(K) u for dot products of
length K summed in another order (128 u covers K up to 16k). For float32, 128 u = 7.6e-6 sits 37x
below one float16 rounding (a rel RMSE of ~2.8e-4) and 145x below one bfloat16 rounding, so a
low-precision round trip inside a float32 model still fails."""

MAX_REL_RMSE: Final = 0.25
"""The norm-wise bound never exceeds this (a cosine of about 0.97): float8's 128 u would be above 1."""


def _rel_rmse_bound(dtype: str) -> float:
    return min(NOISE_UNITS * 2.0 ** -(int(ml_dtypes.finfo(parse_dtype(dtype).numpy).nmant) + 1), MAX_REL_RMSE)


def _default(dtype: str, rtol: float, atol: float) -> Tolerance:
    real = {"complex64": "float32", "complex128": "float64"}.get(dtype, dtype)
    return Tolerance(rtol, atol, _rel_rmse_bound(real))


DEFAULT_TOLERANCES: Final[dict[str, Tolerance]] = {
    "float64": _default("float64", 1e-7, 1e-7),
    "complex128": _default("complex128", 1e-7, 1e-7),
    "float32": _default("float32", 1.3e-6, 1e-5),
    "complex64": _default("complex64", 1.3e-6, 1e-5),
    "float16": _default("float16", 1e-3, 1e-3),
    "bfloat16": _default("bfloat16", 1.6e-2, 1e-2),
    "float8_e4m3fn": _default("float8_e4m3fn", 0.125, 0.125),
    "float8_e4m3fnuz": _default("float8_e4m3fnuz", 0.125, 0.125),
    "float8_e5m2": _default("float8_e5m2", 0.25, 0.25),
    "float8_e5m2fnuz": _default("float8_e5m2fnuz", 0.25, 0.25),
}
"""Elementwise (``rtol``, ``atol``): float32 follows ``torch.testing.assert_close`` (rtol 1.3e-6,
atol 1e-5, here times the scale); lower precisions allow about one rounding step (their machine
epsilon). Norm-wise (``rel_rmse``): :data:`NOISE_UNITS` units of roundoff, at most
:data:`MAX_REL_RMSE` (float64 1.4e-14, float32 7.6e-6, float16 0.0625, bfloat16 0.25). Integers and
bool: exact."""


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
    unknown = set(spec) - {"rtol", "atol", "rel_rmse", "mode"}
    if unknown:
        raise UsageError(f"tolerance override for {route!r}: unknown keys {sorted(unknown)}; use rtol, atol, rel_rmse, mode")
    if "mode" in spec and spec["mode"] not in MODES:
        raise UsageError(f"tolerance override for {route!r}: mode {spec['mode']!r} is not one of {MODES}")
    return dict(spec)


@dataclass(frozen=True, slots=True)
class TolerancePolicy:
    """Which tolerance and mode apply to a tensor of a given route and dtype.

    ``mode`` None: :data:`DEFAULT_MODE`, except where the user gave an elementwise tolerance
    (``rtol`` or ``atol``, globally or for the route) and no ``rel_rmse``: asking for an elementwise
    bound means judging elementwise (``strict``).
    """

    mode: str | None = None
    rtol: float | None = None
    atol: float | None = None
    rel_rmse: float | None = None
    overrides: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @classmethod
    def build(
        cls,
        mode: str | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        rel_rmse: float | None = None,
    ) -> TolerancePolicy:
        if mode is not None and mode not in MODES:
            raise UsageError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        for name, value in (("rtol", rtol), ("atol", atol), ("rel_rmse", rel_rmse)):
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise UsageError(f"{name} must be a finite number >= 0, not {value!r}")
        checked = tuple((route, tuple(sorted(_check_override(route, spec).items()))) for route, spec in (overrides or {}).items())
        return cls(mode, rtol, atol, rel_rmse, checked)

    def _override(self, route: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for pattern, spec in self.overrides:
            if fnmatch.fnmatchcase(route, pattern):
                found.update(dict(spec))  # later overrides win
        return found

    def _resolved(self, override: Mapping[str, Any]) -> str:
        if self.mode is not None:
            return self.mode
        elementwise = self.rtol is not None or self.atol is not None or "rtol" in override or "atol" in override
        norm_wise = self.rel_rmse is not None or "rel_rmse" in override
        return "strict" if elementwise and not norm_wise else DEFAULT_MODE

    @property
    def global_mode(self) -> str:
        """The mode of a route without overrides."""
        return self._resolved({})

    def mode_for(self, route: str) -> str:
        override = self._override(route)
        return str(override.get("mode", self._resolved(override)))

    def _base(self, dtype: str) -> Tolerance:
        base = DEFAULT_TOLERANCES.get(dtype, _EXACT)
        if self.rtol is not None:
            base = replace(base, rtol=self.rtol)
        if self.atol is not None:
            base = replace(base, atol=self.atol, atol_scaled=False)
        if self.rel_rmse is not None:
            base = replace(base, rel_rmse=self.rel_rmse)
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
        if "rel_rmse" in override:
            base = replace(base, rel_rmse=float(override["rel_rmse"]))
        return base

    def to_json(self, dtypes: list[str]) -> dict[str, Any]:
        """What the verdict reports: the mode, the tolerance per dtype seen, and the overrides."""
        return {
            "mode": self.global_mode,
            "rtol": self.rtol,
            "atol": self.atol,
            "rel_rmse": self.rel_rmse,
            "element_slack": ELEMENT_SLACK,
            "by_dtype": {d: self._base(d).to_json() for d in sorted(dtypes)},
            "overrides": [{"route": route, **dict(spec)} for route, spec in self.overrides],
        }
