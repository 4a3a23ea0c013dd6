"""Headless Chromium for the report tests, and the route the buggy model's report must point at."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import pytest

CULPRIT = "blocks.2.mlp.fc1"
"""The module whose weight the buggy copy scales: the report must point at it."""


@dataclass(frozen=True)
class Page:
    """A page after its scripts ran: the serialised DOM and every console line Chromium logged."""

    dom: str
    console: list[str]


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
)


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: run `bash .ci/setup --browser` (it installs Debian's chromium package)")
    return found


def run_chromium(url: str, *extra: str) -> tuple[str, list[str]]:
    """Load ``url`` in a fresh headless Chromium; its stdout and the console lines it logged."""
    with tempfile.TemporaryDirectory(prefix="tracespec-chromium-") as profile:
        done = subprocess.run(
            [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LANG": "C.UTF-8"},
        )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if re.search(r":CONSOLE\(?\d*\)?\]|:CONSOLE:", line)]
    return done.stdout, console
