"""Sequence diff with a "modify" operation: Myers' shortest edit script, then runs of deletions and
insertions paired by similarity (the allennlp ``diff`` seed's extension).

Constraints: pure functions over indices; time O((n + m) * MAX_EDITS) for the diff and at most
``max_cells`` similarity evaluations for the pairing of one run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_EDITS", "PAIRING_CELLS", "EditOp", "diff_sequences", "pair_block"]


@dataclass(frozen=True, slots=True)
class EditOp:
    """One operation of a sequence diff: ``keep``/``modify`` pair ``a`` with ``b``; ``delete`` has
    only ``a``, ``insert`` only ``b``."""

    op: str
    a: int | None
    b: int | None


def kept_pairs(ops: list[EditOp]) -> list[tuple[int, int]]:
    """The ``(a, b)`` index pairs a diff kept."""
    return [(op.a, op.b) for op in ops if op.op == "keep" and op.a is not None and op.b is not None]


MAX_EDITS: Final = 2000
"""Beyond this many insertions and deletions the two sequences are unrelated (an exported op
graph against a module tree): the diff gives up on keeps, and :func:`pair_block` pairs what it
can. Bounds time at O((n + m) * MAX_EDITS) and memory at O(MAX_EDITS ** 2)."""

PAIRING_CELLS: Final = 1_000_000
"""Largest deletions x insertions block paired optimally; larger blocks are paired greedily."""


def _myers(n: int, m: int, equal: Callable[[int, int], bool]) -> list[EditOp]:
    """Myers' O(ND) shortest edit script between two sequences of lengths n and m."""
    offset = n + m + 1
    v = [0] * (2 * offset + 1)
    history: list[list[int]] = []  # history[d]: the part of v for diagonals -d-1 .. d+1
    final_d = None
    for d in range(min(n + m, MAX_EDITS) + 1):
        history.append(v[offset - d - 1 : offset + d + 2])
        done = False
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and v[offset + k - 1] < v[offset + k + 1]):
                x = v[offset + k + 1]
            else:
                x = v[offset + k - 1] + 1
            y = x - k
            while x < n and y < m and equal(x, y):
                x, y = x + 1, y + 1
            v[offset + k] = x
            if x >= n and y >= m:
                done = True
                break
        if done:
            final_d = d
            break
    if final_d is None:
        return [EditOp("delete", i, None) for i in range(n)] + [EditOp("insert", None, j) for j in range(m)]
    ops: list[EditOp] = []
    x, y = n, m
    for d in range(final_d, 0, -1):
        before = history[d]
        k = x - y
        if k == -d or (k != d and before[k - 1 + d + 1] < before[k + 1 + d + 1]):
            prev_k = k + 1
        else:
            prev_k = k - 1
        prev_x = before[prev_k + d + 1]
        prev_y = prev_x - prev_k
        while x > prev_x and y > prev_y:
            x, y = x - 1, y - 1
            ops.append(EditOp("keep", x, y))
        if x == prev_x:
            ops.append(EditOp("insert", None, prev_y))
        else:
            ops.append(EditOp("delete", prev_x, None))
        x, y = prev_x, prev_y
    while x > 0 and y > 0:
        x, y = x - 1, y - 1
        ops.append(EditOp("keep", x, y))
    ops.reverse()
    return ops


def pair_block(
    deleted: list[int], inserted: list[int], similarity: Callable[[int, int], float], max_cells: int = PAIRING_CELLS
) -> list[EditOp]:
    """Pair deletions with insertions in order, maximising total similarity (> 0 only); blocks of more
    than ``max_cells`` pairs are paired greedily."""
    rows, cols = len(deleted), len(inserted)
    if rows * cols > max_cells:
        return _pair_greedily(deleted, inserted, similarity)
    best = [[0.0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            score = similarity(deleted[i], inserted[j])
            paired = best[i + 1][j + 1] + score if score > 0 else -1.0
            best[i][j] = max(paired, best[i + 1][j], best[i][j + 1])
    ops: list[EditOp] = []
    i = j = 0
    while i < rows and j < cols:
        score = similarity(deleted[i], inserted[j])
        if score > 0 and best[i][j] == best[i + 1][j + 1] + score:
            ops.append(EditOp("modify", deleted[i], inserted[j]))
            i, j = i + 1, j + 1
        elif best[i][j] == best[i + 1][j]:
            ops.append(EditOp("delete", deleted[i], None))
            i += 1
        else:
            ops.append(EditOp("insert", None, inserted[j]))
            j += 1
    ops.extend(EditOp("delete", a, None) for a in deleted[i:])
    ops.extend(EditOp("insert", None, b) for b in inserted[j:])
    return ops


def _pair_greedily(deleted: list[int], inserted: list[int], similarity: Callable[[int, int], float]) -> list[EditOp]:
    """Pair in order, each deletion with the next insertion it is similar to (within a window)."""
    ops: list[EditOp] = []
    j = 0
    for a in deleted:
        found = next((k for k in range(j, min(j + 64, len(inserted))) if similarity(a, inserted[k]) > 0), None)
        if found is None:
            ops.append(EditOp("delete", a, None))
            continue
        ops.extend(EditOp("insert", None, b) for b in inserted[j:found])
        ops.append(EditOp("modify", a, inserted[found]))
        j = found + 1
    ops.extend(EditOp("insert", None, b) for b in inserted[j:])
    return ops


def diff_sequences(
    n: int,
    m: int,
    equal: Callable[[int, int], bool],
    similarity: Callable[[int, int], float],
    max_cells: int = PAIRING_CELLS,
) -> list[EditOp]:
    """Myers diff with a "modify" operation.

    ``equal(i, j)`` decides "keep"; each run of deletions and insertions between two keeps is then
    paired in order where ``similarity(i, j) > 0`` ("modify"), maximising the total similarity.
    """
    result: list[EditOp] = []
    deleted: list[int] = []
    inserted: list[int] = []
    for op in [*_myers(n, m, equal), EditOp("keep", None, None)]:
        if op.op == "delete":
            assert op.a is not None  # a deletion has an index in a
            deleted.append(op.a)
        elif op.op == "insert":
            assert op.b is not None
            inserted.append(op.b)
        else:
            result.extend(pair_block(deleted, inserted, similarity, max_cells))
            deleted, inserted = [], []
            if op.a is not None:
                result.append(op)
    return result
