"""A bulk import on a DuckLake racing other committing writers (Store.transact(appends=…))."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from corpus import Store
from corpus.importers import import_prompts
from corpus.lakeschema import duplicate_ids

N = 10000  # prompts in the big import; the racers import overlapping slices of them


def _write(path: Path, lo: int, hi: int) -> Path:
    path.write_text("".join(json.dumps({"text": f"What is {i} + {i}?", "gold_answer": 2 * i})
                            + "\n" for i in range(lo, hi)), encoding="utf-8")
    return path


def test_an_import_racing_committing_writers_completes_without_duplicates(lake_db, tmp_path):
    big = _write(tmp_path / "big.jsonl", 0, N)
    with Store.open(lake_db, command="test") as store:  # the lake's schema, before the race
        pass
    stop, beating, racer_runs, errors = threading.Event(), threading.Event(), [], []

    def race() -> None:
        # Imports of overlapping 40-prompt slices, back to back: each one commits its run row,
        # its rows and its final status while the big import's transaction is open.
        try:
            with Store.open(lake_db, command="racer") as other:
                k = 0
                while not stop.is_set() or k < 2:
                    lo = (k * 37) % (N - 40)
                    part = _write(tmp_path / f"part{k}.jsonl", lo, lo + 40)
                    racer_runs.append(import_prompts(other, part).run_id)
                    k += 1
        except BaseException as exc:  # surfaces in the test's thread
            errors.append(exc)
            racer_runs.append("failed")

    def beat() -> None:
        # A busy writer: one small commit after another (a run's heartbeat, as a ledger
        # writes its batches), so in serial mode the long import would lose every commit.
        try:
            with Store.open(lake_db, command="beats") as other:
                run = other.start_run("beats", {})
                while not stop.is_set():
                    other.transact(lambda con: con.execute(
                        "UPDATE runs SET heartbeat_at = now() WHERE run_id = ?", [run.run_id]))
                    beating.set()
                other.finish_run(run)
        except BaseException as exc:
            errors.append(exc)
            beating.set()

    racer, beats = threading.Thread(target=race), threading.Thread(target=beat)
    racer.start()
    beats.start()
    try:
        with Store.open(lake_db, command="prompts import") as store:
            while not (racer_runs and beating.is_set()) and not errors:  # the race is on
                stop.wait(0.05)
            before = len(racer_runs)
            first = import_prompts(store, big)
            during = len(racer_runs) - before
    finally:
        stop.set()
        racer.join()
        beats.join()
    assert not errors, errors
    assert first.rows == N
    with Store.open(lake_db, command="prompts import") as store:
        with store.connection() as con:
            assert duplicate_ids(con) == {}
            assert con.execute("SELECT count(*), count(DISTINCT prompt_id) FROM prompts"
                               ).fetchone() == (N, N)
            statuses = con.execute("SELECT DISTINCT status FROM runs").fetchall()
        again = import_prompts(store, big)
    assert statuses == [("ok",)]
    assert again.new_prompts == 0
    assert during >= 1, "the racers committed nothing while the import ran: no race was run"
