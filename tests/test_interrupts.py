"""A command stops after Ctrl-C, whatever it was doing; test children never outlive a test.

Orphan ``selfevo`` processes kept running for up to an hour after the fault tests: a child
that survived its SIGINT, and tests that did not kill it when they failed. The product side:
a Ctrl-C held off (closing a connection) is delivered afterwards, never lost, and after
``STOP_GRACE_S`` a process still running ends itself. The test side: tests/children.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from children import child, spawn

REPO = Path(__file__).resolve().parent.parent

HELD_THEN_DELIVERED = """
import os, signal, sys, time
from corpus.errors import mark_interrupts
from corpus.store import _deferred_sigint
mark_interrupts()
try:
    with _deferred_sigint():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        print("held", flush=True)
except KeyboardInterrupt:
    print("delivered", flush=True)
    sys.exit(0)
print("lost", flush=True)
sys.exit(1)
"""

SWALLOWS_CTRL_C = """
import sys, time
import corpus.errors
corpus.errors.STOP_GRACE_S = 1.0
corpus.errors.mark_interrupts()
while True:  # a hang that survives Ctrl-C (a stuck thread, a swallowed KeyboardInterrupt)
    try:
        # "ready" inside the try: a Ctrl-C sent the moment it is read lands where it is
        # swallowed, not between the print and the try (uncaught, Python dies of SIGINT).
        print("ready", flush=True)
        time.sleep(100)
    except KeyboardInterrupt:
        pass
"""


def test_a_ctrl_c_held_off_is_delivered_afterwards_not_lost():
    with child([sys.executable, "-c", HELD_THEN_DELIVERED], cwd=REPO, text=True,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        out, err = p.communicate(timeout=60)
    assert out.split() == ["held", "delivered"], (out, err)
    assert p.returncode == 0


def test_a_process_that_survives_ctrl_c_ends_itself_in_one_line():
    with child([sys.executable, "-c", SWALLOWS_CTRL_C], cwd=REPO, text=True,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("Error: interrupted (Ctrl-C): still stopping after 1s; ended now")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_failing_test_kills_its_child_and_the_childs_children():
    grandchild = "import subprocess, sys, time; print(subprocess.Popen(['sleep', '300']).pid, flush=True); time.sleep(300)"
    with pytest.raises(AssertionError), child([sys.executable, "-c", grandchild],
                                              stdout=subprocess.PIPE, text=True) as p:
        pids = [p.pid, int(p.stdout.readline())]
        raise AssertionError("the test failed")
    assert all(_gone(pid) for pid in pids)


def test_a_child_dies_with_the_test_process_that_started_it():
    """Even a SIGKILLed pytest leaves no child behind (PR_SET_PDEATHSIG)."""
    middle = ("import subprocess, sys, time; sys.path.insert(0, sys.argv[1]); "
              "from children import spawn; "
              "p = spawn(['sleep', '300']); print(p.pid, flush=True); time.sleep(300)")
    p = spawn([sys.executable, "-c", middle, str(Path(__file__).parent)],
              stdout=subprocess.PIPE, text=True)
    try:
        orphan = int(p.stdout.readline())
        os.kill(p.pid, signal.SIGKILL)
        assert _gone(orphan)
    finally:
        p.kill()
        p.communicate(timeout=30)


FINAL_STATUS_BLOCKED = """
import subprocess, sys, time
import corpus.store
from corpus import Store
corpus.store.FINISH_TIMEOUT_S = 1.0
db = sys.argv[1]
HOLD = '''
import duckdb, sys, time
for _ in range(2000):  # until this process has the file
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        time.sleep(0.01)
print("held", flush=True)
time.sleep(60)
'''
holder = subprocess.Popen([sys.executable, "-c", HOLD, db], stdout=subprocess.PIPE, text=True)
try:
    with Store.open(db, command="prompts import") as store:
        t0 = time.monotonic()
        try:
            with store.run("prompts import", {}):
                assert holder.stdout.readline().strip() == "held"  # the store stops answering
                t0 = time.monotonic()
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            print(f"{time.monotonic() - t0:.1f}", flush=True)
finally:
    holder.kill()
    holder.wait()
import corpus.errors
corpus.errors.exit_now_if_stuck(0)  # as the CLI does: the final status is not waited for
sys.exit(3)  # not reached: the store was marked stuck
"""


def test_a_final_status_the_store_does_not_take_in_time_goes_to_the_lock_file(tmp_path):
    """A store that does not answer (here another process holds the file; after some Ctrl-Cs
    DuckDB's own connect never returned) cannot keep an interrupted command alive: within
    FINISH_TIMEOUT_S its final state goes to the lock file, and the next open applies it."""
    from corpus import Store

    db = str(tmp_path / "s.duckdb")
    Store.open(db).close()
    with child([sys.executable, "-c", FINAL_STATUS_BLOCKED, db], cwd=REPO, text=True,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-2000:]
    assert 1.0 <= float(out) < 10, out  # waited FINISH_TIMEOUT_S, not the store's 120 s
    with Store.open(db) as store:
        assert store.query("SELECT status, error FROM runs") == [
            ("interrupted", "interrupted by the user (Ctrl-C)")]


def test_a_ctrl_c_while_waiting_for_a_worker_is_raised_only_once_it_has_finished(monkeypatch):
    """Thread.join interrupted by Ctrl-C marked the import's writer stopped while it still
    ran (CPython 3.11), and the run was finished on its connection meanwhile: a deadlock or
    a segfault. A Worker is waited for through the interrupt, which is raised after."""
    import threading

    from corpus.worker import Worker

    release, finished_at = threading.Event(), []
    worker = Worker(lambda: (release.wait(), finished_at.append(time.monotonic())), "test")
    worker.start()
    real_wait, interrupts = worker.done.wait, []

    def ctrl_c_in_the_first_wait(timeout=None):  # what the SIGINT handler raises there
        if not interrupts:
            interrupts.append(time.monotonic())
            raise KeyboardInterrupt
        return real_wait(timeout)

    monkeypatch.setattr(worker.done, "wait", ctrl_c_in_the_first_wait)
    let_go = threading.Timer(0.2, release.set)
    let_go.start()
    assert worker.running
    with pytest.raises(KeyboardInterrupt):
        worker.wait_through_interrupts()
    raised_at = time.monotonic()
    assert interrupts and finished_at and interrupts[0] < finished_at[0] <= raised_at
    assert worker.done.is_set() and not worker.running
    let_go.join()
