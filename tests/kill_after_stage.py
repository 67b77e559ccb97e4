"""``python tests/kill_after_stage.py r1:snapshot evolve ARGS…``: run ``selfevo`` and SIGKILL
the process right after that evolve stage finishes (a stage it ran, not one it skipped).

A test-only wrapper, so production code carries no fault hook: the resume tests kill at an
exact point between stages by wrapping :meth:`selfevo.evolve.Evolution.stage`.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from selfevo.cli import main
from selfevo.evolve import Evolution


def kill_after(target: str) -> None:
    """Make ``Evolution.stage`` SIGKILL this process once stage ``target`` (``r1:filter``) ran."""
    original = Evolution.stage

    def stage(self: Evolution, stage: str, round: int, fn: Any, extra: Any = None) -> Any:
        ran = self.finished(stage, round) is None
        counts = original(self, stage, round, fn, extra)
        if ran and f"r{round}:{stage}" == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return counts

    Evolution.stage = stage  # type: ignore[method-assign]


if __name__ == "__main__":
    kill_after(sys.argv.pop(1))
    sys.exit(main())
