"""Run ``torchrun`` from a test without leaving its ranks behind.

``subprocess.run(..., timeout=...)`` kills only the torchrun agent it started; the ranks the
agent spawned would keep training (and holding a core) after a timed-out or interrupted test.
Here torchrun starts its own process group, and the whole group is killed when the call ends,
however it ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (torchrun's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args: list[str], *, nproc: int = 2, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node NPROC ARGS``: its output captured,
    and every process of its group killed (SIGKILL) before this returns or raises."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the ranks; torchrun itself if still there
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
