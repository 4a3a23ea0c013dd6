"""The temporary folders a process holds (tracespec.storage.scratch), where the object-store tests
(killed writers and readers, test_object_store.py) do not reach: a forked child's exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_FORKS = textwrap.dedent("""
    import os, sys
    from tracespec.storage.scratch import STAGING_KIND, ScratchFolder
    folder = ScratchFolder(STAGING_KIND)
    child = os.fork()
    if child == 0:
        sys.exit(0)  # a normal exit: the child runs the finalizers it inherited
    os.waitpid(child, 0)
    print(folder.path.is_dir(), flush=True)
    folder.remove()
    print(folder.path.exists(), flush=True)
""")


def test_a_forked_child_that_exits_leaves_its_parents_folder(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FORKS], capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
    assert list(tmp_path.iterdir()) == []
