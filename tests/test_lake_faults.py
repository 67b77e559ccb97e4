"""kill -9 of a writer on a DuckLake store (Postgres catalog), mid-commit and at random.

A writer (``prompts import``, ``collect``) runs as a real process on a lake and is SIGKILLed
either at an exact point of one of its lake transactions (``tests/kill_at_lake_commit.py``:
the body ran and COMMIT was not sent; the COMMIT returned and the run row is still
``running``) or at a random moment (the test_faults.py style). After each kill:

* the lake opens for writing (which reaps by liveness: same host, dead PID → ``killed``,
  with ``counts`` = the rows the run committed) and keeps test_faults' invariants;
* each transaction is all or nothing: an import's rows are all there or none are;
* no keyed table holds an id twice (``corpus.lakeschema.duplicate_ids``);
* a rerun completes with exact counts: an import adds exactly what was missing, a collect
  sends exactly the calls the ledger does not hold as answered.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpus.lakeschema import duplicate_ids
from corpus.store import Store

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
from children import child  # noqa: E402
from test_faults import check_invariants  # noqa: E402

N_COLLECT = 8  # prompts of the collect writer: 3 calls each (response, feedback, refinement)


def _selfevo(args: list[str], kill: str | None = None, timeout: float = 300
             ) -> tuple[int, str]:
    """Run ``selfevo ARGS`` (through the kill wrapper at point ``kill``); (exit code, stderr)."""
    head = [str(TESTS / "kill_at_lake_commit.py"), kill] if kill else ["-m", "selfevo.cli"]
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    with child([sys.executable, *head, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
               stderr=subprocess.PIPE, text=True) as p:
        _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def _prompts_file(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"text": f"Question {i}: what is {i} + 1?",
                                        "gold_answer": str(i + 1)}) + "\n" for i in range(n)),
                    encoding="utf-8")
    return path


def _seed_collect(db: str) -> None:
    from corpus.records import insert_prompts, make_prompt

    rows = [make_prompt(f"Ann has {i} apples and gets {i + 1} more. How many?",
                        gold_answer=str(2 * i + 1), source="t") for i in range(N_COLLECT)]
    with Store.open(db) as store, store.run("seed", {}) as run:
        store.transact(lambda con: insert_prompts(con, rows, run.run_id))


def _collect_args(server, db: str) -> list[str]:
    return ["collect", "--teacher", f"openai:teacher@{server.base_url}", "--responder",
            f"openai:student@{server.base_url}", "--max-tokens", "16", "--where",
            "source = 't'", "--db", db]


def check_lake(db: str, command: str) -> tuple[dict[str, int], list[str]]:
    """After a kill: the invariants hold, no id twice; (row counts, statuses of ``command``)."""
    counts = check_invariants(db)  # opens for writing: reaps the dead run
    with Store.open_readonly(db) as store:
        with store.connection() as con:
            assert duplicate_ids(con) == {}
        statuses = [s for (s,) in store.query(
            "SELECT status FROM runs WHERE command = ? ORDER BY run_id", [command])]
    return counts, statuses


def _import_counts(db: str) -> list[dict[str, int]]:
    with Store.open_readonly(db) as store:
        return [json.loads(c) for (c,) in store.query(
            "SELECT counts FROM runs WHERE command = 'prompts import' ORDER BY run_id")]


def _rerun_import(db: str, src: Path, n: int, landed: int) -> None:
    """Import ``src`` again: it completes, adding exactly the ``n - landed`` missing rows."""
    code, err = _selfevo(["prompts", "import", str(src), "--db", db])
    assert code == 0, err[-2000:]
    counts, statuses = check_lake(db, "prompts import")
    assert counts["prompts"] == n and statuses[-1] == "ok"
    assert _import_counts(db)[-1]["prompts"] == n - landed


def _rerun_collect(db: str, server) -> None:
    """Collect again: it sends exactly the calls not ledgered as answered, then every
    prompt has its record once."""
    with Store.open_readonly(db) as store:
        answered = store.query("SELECT count(*) FROM calls WHERE status = 'ok'")[0][0]
    server.reset_log()
    code, err = _selfevo(_collect_args(server, db))
    assert code == 0, err[-2000:]
    assert len(server.chat_requests()) == 3 * N_COLLECT - answered
    counts, statuses = check_lake(db, "collect")
    assert counts["records"] == N_COLLECT and statuses[-1] == "ok"
    with Store.open_readonly(db) as store:
        assert store.query("SELECT count(*), count(DISTINCT call_id) FROM calls "
                           "WHERE status = 'ok'") == [(3 * N_COLLECT, 3 * N_COLLECT)]


# -- at exact points of a commit ----------------------------------------------------------
# The import lands in one transaction (the first after its run row). Collect: the second
# transaction that puts calls in flight registers the feedback calls once responses are
# answered; the second that answers calls answers feedback (its COMMIT is never sent).
_POINTS = [("prompts import", "body:1"), ("prompts import", "commit:1"),
           ("collect", "body:2:answers"), ("collect", "commit:2:pending")]


@pytest.mark.parametrize("writer,point", [
    pytest.param(w, p, marks=[] if (w, p) == ("collect", "commit:2:pending") else pytest.mark.slow)
    for w, p in _POINTS])
def test_a_writer_killed_at_a_commit_point_leaves_whole_transactions(
        writer, point, lake_db, server, tmp_path):
    if writer == "prompts import":
        src = _prompts_file(tmp_path / "p.jsonl", 300)
        code, err = _selfevo(["prompts", "import", str(src), "--db", lake_db], kill=point)
    else:
        _seed_collect(lake_db)
        code, err = _selfevo(_collect_args(server, lake_db), kill=point)
    assert code == -signal.SIGKILL, err[-2000:]
    counts, statuses = check_lake(lake_db, writer)
    assert statuses == ["killed"]  # same host, dead PID: reaped at the next open
    if writer == "prompts import":
        landed = 300 if point.startswith("commit") else 0  # the import is one transaction
        assert counts["prompts"] == landed
        _rerun_import(lake_db, src, 300, landed)
        return
    with Store.open_readonly(lake_db) as store:
        answered = store.query("SELECT count(*) FROM calls WHERE status = 'ok'")[0][0]
        registered, billed = store.query(
            "SELECT count(*), count(*) FILTER (possibly_billed) FROM calls")[0]
    assert 0 < answered < 3 * N_COLLECT  # killed mid-way: some of the work is ledgered
    assert 0 < billed == registered - answered  # its calls in flight: flagged, not lost
    _rerun_collect(lake_db, server)


# -- at a random moment -------------------------------------------------------------------
def _timed(args: list[str]) -> float:
    t0 = time.monotonic()
    code, err = _selfevo(args)
    assert code == 0, err[-2000:]
    return time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("writer", ["prompts import", "collect"])
def test_a_writer_killed_at_a_random_moment_keeps_the_lake_whole(
        writer, seed, postgres, server, tmp_path):
    def new_lake(name: str) -> str:
        import secrets

        conninfo = postgres.create_database(f"lake_{secrets.token_hex(6)}")
        return f"ducklake:postgres:{conninfo} data_path={tmp_path / name}"

    n = 20_000
    src = _prompts_file(tmp_path / "p.jsonl", n)
    server.latency = 0.05
    calibrate, db = new_lake("calibrate"), new_lake("lake")
    if writer == "prompts import":
        args = lambda d: ["prompts", "import", str(src), "--db", d]  # noqa: E731
    else:
        _seed_collect(calibrate)
        _seed_collect(db)
        args = lambda d: _collect_args(server, d)  # noqa: E731
    duration = _timed(args(calibrate))
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    with child([sys.executable, "-m", "selfevo.cli", *args(db)], cwd=ROOT, env=env,
               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as p:
        time.sleep(random.Random(seed).uniform(0.3, 1.0) * duration)
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=60)
    assert p.returncode in (0, -signal.SIGKILL), err[-2000:]
    counts, statuses = check_lake(db, writer)
    assert statuses in ([], ["ok"], ["killed"])  # [] : killed before its run row landed
    if writer == "prompts import":
        landed = counts["prompts"]
        assert landed in (0, n)  # one transaction: all or nothing
        _rerun_import(db, src, n, landed)
    else:
        _rerun_collect(db, server)
