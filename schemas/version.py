"""The code version written into every run, export and checkpoint: package version + git commit.

In ``schemas`` (the bottom layer) so the trainer, which may not import the store, shares it.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path


@functools.cache
def code_version() -> str:
    """``selfevo 0.1.0`` plus ``+g<commit>`` (and ``.dirty``) when running from a git checkout."""
    try:
        version = metadata.version("selfevo")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return version
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    if not commit:
        return version
    return f"{version}+g{commit}" + (".dirty" if dirty else "")
