"""``torchrun ... tests/trainer_crash.py RANK STEP -- TRAINER FLAGS``: ``python -m trainer``
whose rank RANK kills itself (SIGKILL, no cleanup) in the middle of optimizer step STEP.

The kill-and-resume test needs a rank to die at a known point, after some checkpoints and
before the end; timing a kill from outside would race a run this small. Nothing of the
trainer is replaced: the process only counts its own backward passes and dies in the one
that was asked for.
"""

from __future__ import annotations

import os
import signal
import sys

import trainer.train
from trainer.__main__ import main

if __name__ == "__main__":
    crash_rank, crash_step = int(sys.argv[1]), int(sys.argv[2])
    real = trainer.train.backward_window
    calls = {"n": 0}

    def backward_window(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == crash_step and int(os.environ.get("RANK", "0")) == crash_rank:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    trainer.train.backward_window = backward_window
    sys.exit(main(sys.argv[4:] if sys.argv[3] == "--" else sys.argv[3:]))
