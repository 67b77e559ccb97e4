"""Fault injection: every writer killed (SIGKILL) or interrupted (SIGINT) at many points,
then the store's invariants checked after the next open (issue 12, Deliver 6).

Each writer runs as a real ``selfevo`` process on a copy of one prepared store. A first,
unkilled run measures how long it takes; each seed then kills it after a random fraction of
that. After the kill the store is opened for writing (which reaps dead runs) and
:func:`check_invariants` must hold: no orphans, every run in a final state, counts that
match the rows, snapshots whose rows hash to their content hash, an export directory that is
absent or complete. ``make test`` runs two seeds per writer; ``make test-all`` (the slow
marker) runs many more.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from corpus import Store
from corpus.export import verify_export
from schemas.identity import selection_hash

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from children import child  # noqa: E402

FINAL = {"ok", "failed", "interrupted", "killed"}


# -- the invariants --------------------------------------------------------------------------

#: (child table, column, parent table, column): every child value has its parent row.
REFERENCES = [
    ("records", "prompt_id", "prompts", "prompt_id"),
    ("decisions", "record_id", "records", "record_id"),
    ("decisions", "run_id", "runs", "run_id"),
    ("snapshot_records", "snapshot_id", "snapshots", "snapshot_id"),
    ("snapshot_records", "record_id", "records", "record_id"),
    ("attempts", "call_id", "calls", "call_id"),
    ("records", "response_call_id", "calls", "call_id"),
    ("records", "feedback_call_id", "calls", "call_id"),
    ("records", "refinement_call_id", "calls", "call_id"),
    ("eval_items", "eval_id", "evals", "eval_id"),
]


def check_invariants(db: str) -> dict[str, int]:
    """Open the store for writing (as the next command would) and check it; returns row
    counts by table."""
    with Store.open(db, command="invariants") as store:
        runs = store.query("SELECT run_id, status FROM runs")
        assert {s for _, s in runs} <= FINAL, runs
        tables = [t for (t,) in store.query(
            "SELECT table_name FROM information_schema.columns WHERE column_name = 'run_id' "
            "AND table_name NOT IN ('runs') AND table_name IN (SELECT table_name FROM "
            "information_schema.tables WHERE table_type = 'BASE TABLE')")]
        for t in tables:  # every row names a run that exists
            orphans = store.query(f'SELECT count(*) FROM "{t}" WHERE run_id NOT IN '
                                  "(SELECT run_id FROM runs)")[0][0]
            assert orphans == 0, f"{orphans} rows of {t} name no run"
        for child, col, parent, pcol in REFERENCES:
            n = store.query(f"SELECT count(*) FROM {child} c WHERE c.{col} IS NOT NULL AND "
                            f"NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{pcol} = c.{col})")[0][0]
            assert n == 0, f"{n} orphans: {child}.{col} -> {parent}.{pcol}"
        for sid, n, content_hash in store.query(
                "SELECT snapshot_id, n, content_hash FROM snapshots"):
            ids = [r for (r,) in store.query(
                "SELECT record_id FROM snapshot_records WHERE snapshot_id = ?", [sid])]
            assert len(ids) == n and selection_hash(ids) == content_hash, sid
        assert store.query("SELECT count(*) FROM calls WHERE status = 'pending' "
                           "AND NOT possibly_billed") == [(0,)]
        for run_id, _status, counts in store.query(
                "SELECT run_id, status, counts FROM runs WHERE status = 'killed'"):
            # a killed run's counts are the rows it committed (corpus.store.reap_dead_runs)
            got = json.loads(counts or "{}")
            for t in tables:
                n = store.query(f'SELECT count(*) FROM "{t}" WHERE run_id = ?', [run_id])[0][0]
                assert got.get(t, 0) == n, (run_id, t, got, n)
        for run_id, counts in store.query(
                "SELECT run_id, counts FROM runs WHERE status = 'ok' "
                "AND command IN ('prompts import', 'records import')"):
            got = json.loads(counts)
            for t in ("prompts", "records"):
                if t in got:
                    n = store.query(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id])[0][0]
                    assert got[t] == n, (run_id, t, got, n)
        return {t: store.query(f'SELECT count(*) FROM "{t}"')[0][0]
                for t in ("prompts", "records", "decisions", "snapshots", "calls")}


def check_export(out: Path) -> None:
    """An export directory is absent or complete; never half-written."""
    if out.exists():
        verify_export(out)


# -- the prepared store and the writers --------------------------------------------------------


def _records_file(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            k = rng.randrange(n // 2)  # half the prompts twice: work for dedup
            answer = str(k % 9)
            f.write(json.dumps({
                "prompt": f"Ann has {k} apples and {k % 7} pears. How many fruit?",
                "kind": "meta", "response": f"She has {k + 1}.",
                "feedback": f"Check the sum.\nVerdict: {'correct' if i % 3 else 'incorrect'}",
                "verdict": "correct" if i % 3 else "incorrect",
                "refinement": f"The answer is {answer}.", "gold_answer": answer}) + "\n")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A store with prompts, records and a snapshot; input files for the importers."""
    from corpus.importers import import_generated, import_records
    from corpus.snapshots import create_snapshot

    d = tmp_path_factory.mktemp("faults")
    db = d / "base.duckdb"
    with Store.open(db) as store:
        import_generated(store, 50, seed=3, split="train")
        import_records(store, _records_file(d / "seed.jsonl", 3000))
        create_snapshot(store, "base", "kind = 'meta'")
    prompts = d / "prompts.jsonl"
    with open(prompts, "w", encoding="utf-8") as f:
        for i in range(15_000):
            f.write(json.dumps({"text": f"Question {i}: what is {i} + 1?",
                                "gold_answer": str(i + 1)}) + "\n")
    return {"db": db, "prompts": prompts, "records": _records_file(d / "more.jsonl", 5_000, 1)}


def writer_args(name: str, base: dict[str, Path], db: str, out: Path, server_url: str) -> list[str]:
    """The selfevo command line of writer ``name``."""
    return {
        "prompts import": ["prompts", "import", str(base["prompts"])],
        "records import": ["records", "import", str(base["records"])],
        "curate filter": ["curate", "filter", "--step", "format", "--step", "gold-match"],
        "curate dedup": ["curate", "dedup", "--exact", "--near"],
        "snapshot create": ["snapshot", "create", "s2", "--where", "verdict = 'correct'"],
        "snapshot export": ["snapshot", "export", "base", "--format", "jsonl", "--out", str(out)],
        "collect": ["collect", "--teacher", f"openai:teacher@{server_url}", "--responder",
                    f"openai:student@{server_url}", "--max-tokens", "16", "--where",
                    "source = 'generated'", "--concurrency", "4"],
    }[name] + ["--db", db]


WRITERS = ["prompts import", "records import", "curate filter", "curate dedup",
           "snapshot create", "snapshot export", "collect"]
_durations: dict[str, float] = {}


def _selfevo(args: list[str], env: dict[str, str]) -> AbstractContextManager[subprocess.Popen]:
    """A ``selfevo`` process for the block, killed and reaped however the block ends."""
    return child([sys.executable, "-X", "faulthandler", "-m", "selfevo.cli", *args], cwd=REPO,
                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _duration(name: str, base: dict[str, Path], tmp: Path, url: str, env: dict) -> float:
    """How long the writer takes unkilled (measured once; it must succeed and keep the
    invariants too)."""
    if name not in _durations:
        db = str(tmp / "calibrate.duckdb")
        shutil.copy(base["db"], db)
        t0 = time.monotonic()
        with _selfevo(writer_args(name, base, db, tmp / "cal-out", url), env) as p:
            _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        _durations[name] = time.monotonic() - t0
        check_invariants(db)
        check_export(tmp / "cal-out")
    return _durations[name]


def _wait_started(p: subprocess.Popen, db: str) -> None:
    """Until the process holds the store's job lock: Python has started and the command runs
    (a Ctrl-C while Python itself is still importing is Python's, not selfevo's)."""
    lock = Path(db + ".lock")
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline:
        if lock.exists() and lock.read_bytes().startswith(f"PID {p.pid} ".encode()):
            return
        time.sleep(0.01)


def kill_at_random(name: str, seed: int, sig: int, base, tmp: Path,
                   server) -> tuple[subprocess.Popen, str]:
    """Run writer ``name`` on a fresh copy of the store and send ``sig`` after a random
    fraction of its unkilled duration (SIGINT: of the time after it took the store); returns
    the finished process and its stderr."""
    server.handler = lambda body, k: None
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    duration = _duration(name, base, tmp, server.base_url, env)
    db = str(tmp / f"s{seed}.duckdb")
    shutil.copy(base["db"], db)
    t0 = time.monotonic()
    with _selfevo(writer_args(name, base, db, tmp / f"out{seed}", server.base_url), env) as p:
        if sig == signal.SIGINT:
            _wait_started(p, db)
        left = max(0.05, duration - (time.monotonic() - t0))
        time.sleep(random.Random(seed).uniform(0.02, 1.0) * left)
        p.send_signal(sig)
        try:
            # Well within the stop watchdog (corpus.errors.STOP_GRACE_S) plus start-up.
            _, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:  # a hang: fail with every thread's stack
            p.send_signal(signal.SIGABRT)
            _, err = p.communicate(timeout=30)
            pytest.fail(f"{name} hung after signal {sig}:\n{err[-6000:]}")
    return p, err


def _new_statuses(db: str, name: str) -> list[str]:
    """Statuses of the runs of command ``name`` made after the prepared store."""
    with Store.open_readonly(db) as store:
        return [s for (s,) in store.query(
            "SELECT status FROM runs WHERE command = ? AND started_at > "
            "(SELECT max(started_at) FROM runs WHERE command = 'snapshot create' "
            "AND json_extract_string(config, '$.name') = 'base')", [name])]


def _seeds(n_fast: int, n_slow: int) -> list:
    return [*range(n_fast), *(pytest.param(s, marks=pytest.mark.slow)
                              for s in range(n_fast, n_fast + n_slow))]


@pytest.mark.parametrize("seed", _seeds(2, 12))
@pytest.mark.parametrize("name", WRITERS)
def test_sigkill_at_any_point_keeps_the_store_consistent(name, seed, base, tmp_path, server):
    p, err = kill_at_random(name, seed, signal.SIGKILL, base, tmp_path, server)
    assert p.returncode in (0, -signal.SIGKILL), err[-2000:]
    db = str(tmp_path / f"s{seed}.duckdb")
    check_invariants(db)
    check_export(tmp_path / f"out{seed}")
    mine = _new_statuses(db, name)
    assert mine in ([], ["ok"], ["killed"]), mine
    if name == "snapshot export":  # the next export cleans up and completes
        args = writer_args(name, base, db, tmp_path / f"out{seed}", server.base_url)
        with _selfevo(args, dict(os.environ)) as again:
            _, err = again.communicate(timeout=120)
        assert again.returncode == 0, err[-2000:]
        check_export(tmp_path / f"out{seed}")
        assert not list(tmp_path.glob(f".out{seed}.partial-*"))


@pytest.mark.parametrize("seed", _seeds(2, 10))
@pytest.mark.parametrize("name", ["prompts import", "records import", "curate filter",
                                  "curate dedup", "collect"])
def test_ctrl_c_at_any_point_is_one_line_and_the_run_interrupted(name, seed, base, tmp_path,
                                                                 server):
    """Ctrl-C printed "RuntimeError: Query interrupted" about 40% of the time and left the run
    failed or running; now: exit 130 with one line, the run 'interrupted' (or it finished)."""
    p, err = kill_at_random(name, seed, signal.SIGINT, base, tmp_path, server)
    # -SIGINT: the signal came while Python was shutting down after the command finished
    assert p.returncode in (0, 130, -signal.SIGINT), (p.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert "still stopping after" not in err, err[-6000:]  # a hang, ended by the watchdog
    if p.returncode == 130:
        assert err.strip().splitlines()[-1].startswith("Error: interrupted (Ctrl-C)"), err
    db = str(tmp_path / f"s{seed}.duckdb")
    check_invariants(db)  # the next open applies a final state left in the lock file
    mine = _new_statuses(db, name)
    if p.returncode == 130:
        # 'ok': the Ctrl-C landed after the run's work and final row were committed (while
        # closing the store or printing the summary); the work is whole, the command stops.
        assert mine in ([], ["interrupted"], ["ok"]), (mine, err)
    else:
        assert mine == ["ok"], (p.returncode, mine)
