"""Symbolic links inside a trace may stay inside it; one that leads out is refused, wherever it is
in the path and whether or not the folders around it were resolved before."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracespec.errors import PathEscapeError
from tracespec.storage.zarr_store import Confinement


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "trace"
    (base / "store" / "a" / "c").mkdir(parents=True)
    (base / "store" / "a" / "c" / "0").write_bytes(b"data")
    outside = tmp_path / "elsewhere"
    (outside / "c").mkdir(parents=True)
    (outside / "c" / "0").write_bytes(b"secret")
    return base, outside


def test_plain_paths_and_absent_files_pass(tree: tuple[Path, Path]) -> None:
    base, _ = tree
    confined = Confinement(base)
    assert confined.check(base / "store" / "a" / "c" / "0", "x") == base / "store" / "a" / "c" / "0"
    assert confined.check(base / "store" / "a" / "c" / "9", "x") == base / "store" / "a" / "c" / "9"


def test_a_link_that_stays_inside_passes(tree: tuple[Path, Path]) -> None:
    base, _ = tree
    (base / "store" / "b").symlink_to(Path("a"))
    assert Confinement(base).check(base / "store" / "b" / "c" / "0", "x")


@pytest.mark.parametrize("linked", ["file", "folder", "middle folder"])
def test_a_link_leading_out_is_refused_after_its_neighbours_were_resolved(tree: tuple[Path, Path], linked: str) -> None:
    base, outside = tree
    confined = Confinement(base)
    confined.check(base / "store" / "a" / "c" / "0", "x")  # resolve (and remember) the folders first
    if linked == "file":
        (base / "store" / "a" / "c" / "1").symlink_to(outside / "c" / "0")
        escaping = base / "store" / "a" / "c" / "1"
    elif linked == "folder":
        (base / "store" / "e").symlink_to(outside)
        escaping = base / "store" / "e" / "c" / "0"
    else:
        (base / "store" / "e").symlink_to(outside)
        escaping = base / "store" / "e" / "c"
    with pytest.raises(PathEscapeError, match="leads outside"):
        confined.check(escaping, "x")


def test_a_base_reached_through_a_link_is_its_own_inside(tree: tuple[Path, Path], tmp_path: Path) -> None:
    base, _ = tree
    alias = tmp_path / "alias"
    alias.symlink_to(base)
    assert Confinement(alias).check(alias / "store" / "a" / "c" / "0", "x")
