"""What changed between two checkpoints: the ``allennlp diff`` feature set, streaming.

Constraints:
- The edit script is computed from keys and shapes only (metadata); then tensors are read in
  pairs, one pair at a time, so memory stays at a small multiple of the largest tensor whatever
  the model size. Both checkpoints are never in memory.
- The edit script is Myers' shortest edit script over ``(key, shape)`` with a fourth operation,
  as in allennlp: a kept entry whose tensors differ by more than ``threshold`` is ``modify``.
  Order matters (it is the order the modules were registered in, usually the data flow). One
  departure from ``git diff``: a key that is in both files with the same shape is always
  compared, even where the two orders disagree (safetensors sorts keys, a ``.bin`` does not);
  it is reported where it stands in A.
- Distance is the size-normalised L2 distance ``||a - b|| / sqrt(n)`` (the root of the mean
  squared difference), computed blockwise (float32 differences and squares for float32 and
  narrower inputs, summed in float64; relative error ~1e-7) and multiplied by ``scale``; the threshold
  applies to that scaled value, as allennlp did. NaN or Inf on one side only counts as
  modified (distance NaN or Inf); the same NaN or Inf on both sides is unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from tracespec.convert.checkpoint import Checkpoint, TensorEntry, open_checkpoint
from tracespec.errors import UsageError

__all__ = ["CheckpointDiff", "EditStep", "diff_checkpoints", "edit_script", "rms_distance", "strip_prefix"]

Op = Literal["keep", "insert", "delete", "modify"]

# Elements per block of work: at most 512 KiB, so each block stays in a core's cache.
_BLOCK: Final = 1 << 16
_THREADS: Final = min(2, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class EditStep:
    """One line of the edit script. ``key`` is after prefix stripping.

    ``shape`` is the tensor's shape (of ``b`` for an insert, of ``a`` otherwise); ``distance``
    is set for ``keep`` and ``modify``.
    """

    op: Op
    key: str
    shape: tuple[int, ...]
    distance: float | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None

    def line(self) -> str:
        """The step as allennlp printed it: ``-`` delete, ``+`` insert, ``!`` modify, `` `` keep."""
        shape = f"shape = {self.shape}"
        if self.op == "delete":
            return f"-{self.key}, {shape}"
        if self.op == "insert":
            return f"+{self.key}, {shape}"
        dtypes = f", dtype {self.dtype_a} -> {self.dtype_b}" if self.dtype_a != self.dtype_b else ""
        mark = "!" if self.op == "modify" else " "
        return f"{mark}{self.key}, {shape}, \u25b3 = {self.distance:.4f}{dtypes}"

    def to_json(self) -> dict[str, Any]:
        distance = self.distance if self.distance is None or math.isfinite(self.distance) else str(self.distance)
        return {
            "op": self.op,
            "key": self.key,
            "shape": list(self.shape),
            "distance": distance,
            "dtype_a": self.dtype_a,
            "dtype_b": self.dtype_b,
        }


@dataclass(frozen=True, slots=True)
class CheckpointDiff:
    """The edit script from checkpoint ``a`` to checkpoint ``b`` and the options that made it."""

    a: str
    b: str
    steps: list[EditStep]
    threshold: float
    scale: float

    def count(self, op: Op) -> int:
        return sum(step.op == op for step in self.steps)

    @property
    def same(self) -> bool:
        """No tensor added, removed, reshaped or changed beyond the threshold."""
        return all(step.op == "keep" for step in self.steps)

    def lines(self, *, show_unchanged: bool = False) -> Iterator[str]:
        """The script as text lines, then a one-line summary."""
        for step in self.steps:
            if step.op != "keep" or show_unchanged:
                yield step.line()
        yield self.summary()

    def summary(self) -> str:
        return (
            f"{self.count('keep')} unchanged, {self.count('modify')} modified (\u25b3 > {self.threshold:g}), "
            f"{self.count('insert')} added, {self.count('delete')} removed"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "same": self.same,
            "threshold": self.threshold,
            "scale": self.scale,
            "distance": "rms (L2 / sqrt(n)) x scale",
            "counts": {op: self.count(op) for op in ("keep", "modify", "insert", "delete")},
            "steps": [step.to_json() for step in self.steps],
        }


def strip_prefix(entries: Sequence[TensorEntry], prefix: str, where: str) -> list[tuple[str, TensorEntry]]:
    """``(stripped key, entry)`` for each entry; keys without ``prefix`` stay as they are.

    Raises :class:`UsageError` when ``prefix`` starts no key (a typo would otherwise silently
    turn the whole diff into deletes and inserts) or when stripping makes two keys equal.
    """
    if not prefix:
        return [(e.key, e) for e in entries]
    out = [(e.key[len(prefix) :] if e.key.startswith(prefix) else e.key, e) for e in entries]
    if not any(e.key.startswith(prefix) for e in entries):
        sample = ", ".join(e.key for e in entries[:3])
        raise UsageError(f"{where}: no key starts with the prefix {prefix!r} (keys look like: {sample})")
    seen: dict[str, str] = {}
    for key, entry in out:
        if key in seen:
            raise UsageError(f"{where}: stripping {prefix!r} makes {seen[key]!r} and {entry.key!r} the same key {key!r}")
        seen[key] = entry.key
    return out


def edit_script(a: Sequence[Hashable], b: Sequence[Hashable]) -> list[tuple[Literal["keep", "insert", "delete"], int, int]]:
    """Myers' shortest edit script from ``a`` to ``b``: ``(op, index in a, index in b)``.

    For ``delete`` the b index is where b stands, for ``insert`` the a index likewise. A common
    head and tail are matched first, so two similar checkpoints cost linear time.
    """
    head = 0
    while head < len(a) and head < len(b) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < len(a) - head and tail < len(b) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    middle = _myers(a[head : len(a) - tail], b[head : len(b) - tail])
    script: list[tuple[Literal["keep", "insert", "delete"], int, int]] = [("keep", i, i) for i in range(head)]
    script += [(op, i + head, j + head) for op, i, j in middle]
    script += [("keep", len(a) - tail + k, len(b) - tail + k) for k in range(tail)]
    return script


def _myers(a: Sequence[Hashable], b: Sequence[Hashable]) -> list[tuple[Literal["keep", "insert", "delete"], int, int]]:
    n, m = len(a), len(b)
    if not set(a) & set(b):  # nothing in common: skip the O(D^2) search
        return [("delete", i, 0) for i in range(n)] + [("insert", n, j) for j in range(m)]
    offset = n + m
    v = [0] * (2 * offset + 2)
    trace: list[list[int]] = []
    for d in range(n + m + 1):
        trace.append(v[offset - d : offset + d + 2])  # only diagonals -d..d+1 matter at depth d
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and v[offset + k - 1] < v[offset + k + 1]):
                x = v[offset + k + 1]
            else:
                x = v[offset + k - 1] + 1
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x, y = x + 1, y + 1
            v[offset + k] = x
            if x >= n and y >= m:
                return _backtrack(trace, n, m, d)
    raise AssertionError("unreachable: the edit distance is at most n + m")


def _backtrack(trace: list[list[int]], n: int, m: int, depth: int) -> list[tuple[Literal["keep", "insert", "delete"], int, int]]:
    script: list[tuple[Literal["keep", "insert", "delete"], int, int]] = []
    x, y = n, m
    for d in range(depth, 0, -1):
        saved = trace[d]  # v before depth d, diagonals -d..d+1 at indices 0..2d+1

        def at(k: int, saved: list[int] = saved, d: int = d) -> int:
            return saved[k + d]

        k = x - y
        if k == -d or (k != d and at(k - 1) < at(k + 1)):
            prev_k = k + 1
        else:
            prev_k = k - 1
        prev_x = at(prev_k)
        prev_y = prev_x - prev_k
        while x > prev_x and y > prev_y:
            x, y = x - 1, y - 1
            script.append(("keep", x, y))
        if prev_k == k + 1:
            script.append(("insert", x, prev_y))
        else:
            script.append(("delete", prev_x, y))
        x, y = prev_x, prev_y
    while x > 0 and y > 0:
        x, y = x - 1, y - 1
        script.append(("keep", x, y))
    script.reverse()
    return script


def _work_dtype(a: np.dtype, b: np.dtype) -> np.dtype:
    """float32 when both sides fit in it exactly (float32, float16, bfloat16), else 64-bit."""
    if a.kind == "c" or b.kind == "c":
        return np.dtype(np.complex128)
    narrow = all((d.kind == "f" and d.itemsize <= 4) or d.name == "bfloat16" for d in (a, b))
    return np.dtype(np.float32) if narrow else np.dtype(np.float64)


def _squared_error(a: np.ndarray, b: np.ndarray, start: int, stop: int) -> float:
    """Sum of ``|a - b|^2`` over ``[start, stop)``, block by block.

    In float32 the difference is exact when the two values are within a factor of two
    (Sterbenz), and each square is rounded once; the sum is accumulated in float64. A block
    whose float32 squares overflow is redone in float64.
    """
    work = _work_dtype(a.dtype, b.dtype)
    buffer = np.empty(min(_BLOCK, max(stop - start, 0)), work)
    total = 0.0
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and Inf are values here, not errors
        for first in range(start, stop, _BLOCK):
            last = min(first + _BLOCK, stop)
            x, y = a[first:last], b[first:last]
            block = _block_squares(x, y, buffer[: last - first])
            if math.isinf(block) and work == np.float32:
                block = _block_squares(x, y, np.empty(last - first, np.float64))
            if not math.isfinite(block):
                block = _nonfinite_block(x, y)
            total += block
    return total


def _nonfinite_block(a: np.ndarray, b: np.ndarray) -> float:
    """A block with NaN or Inf: positions where both sides hold the same value (NaN and NaN,
    Inf and Inf) are unchanged; any other NaN or Inf makes the distance NaN or Inf."""
    wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(b) else np.float64
    x, y = a.astype(wide), b.astype(wide)
    same = (x == y) | (np.isnan(x) & np.isnan(y))
    difference = np.where(same, 0, x - y)
    return float(np.vdot(difference, difference).real)


def _block_squares(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> float:
    if a.dtype == out.dtype:
        np.subtract(a, b, out=out, dtype=out.dtype)
    else:
        np.copyto(out, a, casting="unsafe")
        np.subtract(out, b, out=out, dtype=out.dtype, casting="unsafe")
    if out.dtype.kind == "c":
        return float(np.vdot(out, out).real)
    np.multiply(out, out, out=out)
    return float(np.add.reduce(out, dtype=np.float64))


def rms_distance(a: np.ndarray, b: np.ndarray, pool: ThreadPoolExecutor | None = None) -> float:
    """``||a - b|| / sqrt(n)``, blockwise (work memory: one 256-512 KiB block per thread)."""
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    n = flat_a.size
    if n == 0:
        return 0.0
    if pool is None or n < 4 * _BLOCK:
        total = _squared_error(flat_a, flat_b, 0, n)
    else:
        half = (n // 2 // _BLOCK) * _BLOCK
        first = pool.submit(_squared_error, flat_a, flat_b, 0, half)
        total = _squared_error(flat_a, flat_b, half, n) + first.result()
    return math.sqrt(total / n)


def diff_checkpoints(
    a: str | os.PathLike[str] | Checkpoint,
    b: str | os.PathLike[str] | Checkpoint,
    *,
    strip_prefix_a: str = "",
    strip_prefix_b: str = "",
    threshold: float = 1e-5,
    scale: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> CheckpointDiff:
    """The edit script from checkpoint ``a`` to ``b`` (files of any supported format, mixed).

    ``progress(done, total)`` is called after each pair of tensors is compared.
    """
    if threshold < 0 or not math.isfinite(threshold):
        raise UsageError(f"threshold must be a non-negative number, not {threshold}")
    if scale <= 0 or not math.isfinite(scale):
        raise UsageError(f"scale must be a positive number, not {scale}")
    ckpt_a = a if isinstance(a, Checkpoint) else open_checkpoint(a)
    ckpt_b = b if isinstance(b, Checkpoint) else open_checkpoint(b)
    keyed_a = strip_prefix(ckpt_a.entries, strip_prefix_a, str(ckpt_a.path))
    keyed_b = strip_prefix(ckpt_b.entries, strip_prefix_b, str(ckpt_b.path))
    script = _pair_moves(edit_script([(k, e.shape) for k, e in keyed_a], [(k, e.shape) for k, e in keyed_b]), keyed_a, keyed_b)
    total = sum(op == "keep" for op, _, _ in script)
    steps: list[EditStep] = []
    done = 0
    with ThreadPoolExecutor(max_workers=_THREADS - 1) if _THREADS > 1 else _no_pool() as pool:
        for op, i, j in script:
            if op == "delete":
                key, entry = keyed_a[i]
                steps.append(EditStep("delete", key, entry.shape, dtype_a=entry.dtype))
            elif op == "insert":
                key, entry = keyed_b[j]
                steps.append(EditStep("insert", key, entry.shape, dtype_b=entry.dtype))
            else:
                key, entry_a = keyed_a[i]
                entry_b = keyed_b[j][1]
                distance = scale * rms_distance(ckpt_a.read(entry_a.key), ckpt_b.read(entry_b.key), pool)
                # NaN counts as changed, and so does a new dtype whatever the values.
                changed = not distance <= threshold or entry_a.dtype != entry_b.dtype
                steps.append(
                    EditStep("modify" if changed else "keep", key, entry_a.shape, distance, entry_a.dtype, entry_b.dtype)
                )
                done += 1
                if progress is not None:
                    progress(done, total)
    return CheckpointDiff(str(ckpt_a.path), str(ckpt_b.path), steps, threshold, scale)


def _pair_moves(
    script: list[tuple[Literal["keep", "insert", "delete"], int, int]],
    keyed_a: list[tuple[str, TensorEntry]],
    keyed_b: list[tuple[str, TensorEntry]],
) -> list[tuple[Literal["keep", "insert", "delete"], int, int]]:
    """Compare a key that only moved (same key and shape, another position) where it stands in A.

    Orders differ for reasons that say nothing about the model (safetensors sorts its keys;
    a ``.bin`` keeps registration order): reporting such a key as removed and added would hide
    whether its values changed.
    """
    inserted = {(keyed_b[j][0], keyed_b[j][1].shape): j for op, _, j in script if op == "insert"}
    moved = {}
    for op, i, _ in script:
        key = (keyed_a[i][0], keyed_a[i][1].shape) if op == "delete" else None
        if key is not None and key in inserted:
            moved[i] = inserted.pop(key)
    if not moved:
        return script
    partners = set(moved.values())
    out: list[tuple[Literal["keep", "insert", "delete"], int, int]] = []
    for op, i, j in script:
        if op == "delete" and i in moved:
            out.append(("keep", i, moved[i]))
        elif not (op == "insert" and j in partners):
            out.append((op, i, j))
    return out


class _no_pool:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
