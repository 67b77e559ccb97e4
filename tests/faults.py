"""Fault helpers for the guarantee tests: a small disk, a disk filled up, store invariants."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` mounted at ``where``: writes past it fail with ENOSPC, as on a
    full disk (a file-size rlimit would give EFBIG per file instead, a different failure)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs",
                           str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path, leave_kb: int) -> Path:
    """Fill ``disk`` with a ballast file until only about ``leave_kb`` is free."""
    st = os.statvfs(disk)
    free_kb = st.f_bavail * st.f_frsize // 1024
    ballast = disk / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free_kb - leave_kb) * 1024)
    return ballast
