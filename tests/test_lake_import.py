"""A bulk import on a DuckLake racing other committing writers (Store.transact(appends=…))."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpus import Store, inserts
from corpus.importers import import_prompts
from corpus.lake import CommitConflict, Lake, RetryPolicy
from corpus.lakeschema import duplicate_ids

N = 3000  # prompts in the big import; the racing imports write overlapping slices of them


def _write(path: Path, lo: int, hi: int) -> Path:
    path.write_text("".join(json.dumps({"text": f"What is {i} + {i}?", "gold_answer": 2 * i})
                            + "\n" for i in range(lo, hi)), encoding="utf-8")
    return path


def _race_every_insert(monkeypatch, other: Store, tmp_path: Path) -> list[str]:
    """Each time an import has inserted prompts, another writer commits a whole import of
    40 prompts the big file also has (its own run row, rows and final status): every attempt
    of the big import's transaction has other commits land after its first statement.
    Returns the racing runs' ids."""
    original, runs = inserts.insert_absent_from, []

    def racing(con, table, *args, **kw):
        added = original(con, table, *args, **kw)  # the transaction's snapshot is now fixed
        if table == "prompts" and not getattr(racing, "busy", False):
            racing.busy = True
            try:
                lo = 37 * len(runs) % (N - 40)
                part = _write(tmp_path / f"part{len(runs)}.jsonl", lo, lo + 40)
                runs.append(import_prompts(other, part).run_id)
            finally:
                racing.busy = False
        return added

    monkeypatch.setattr(inserts, "insert_absent_from", racing)
    return runs


def test_an_import_racing_committing_writers_completes_without_duplicates(
        lake_db, tmp_path, monkeypatch):
    big = _write(tmp_path / "big.jsonl", 0, N)
    with Store.open(lake_db, command="prompts import") as store, \
            Store.open(lake_db, command="racer") as other:
        racers = _race_every_insert(monkeypatch, other, tmp_path)
        first = import_prompts(store, big)
        monkeypatch.undo()
        with store.connection() as con:
            assert duplicate_ids(con) == {}
            assert con.execute("SELECT count(*), count(DISTINCT prompt_id) FROM prompts"
                               ).fetchone() == (N, N)
            # The racer's rows of the shared ids were reconciled away: the import's run
            # started first (smallest run_id), so its row of each id survives.
            owners = dict(con.execute("SELECT run_id, count(*) FROM prompts GROUP BY ALL"
                                      ).fetchall())
            statuses = con.execute("SELECT DISTINCT status FROM runs").fetchall()
        again = import_prompts(store, big)
    assert len(racers) == 1  # one attempt: its commit was rebased, not re-run
    assert owners == {first.run_id: N}
    assert statuses == [("ok",)]
    assert again.new_prompts == 0


def test_in_serial_mode_the_same_race_starves_the_import(lake_db, tmp_path, monkeypatch):
    # Why imports append on a rebasing connection: the same import as one first-committer-
    # wins transaction loses every attempt and gives up.
    big = _write(tmp_path / "big.jsonl", 0, N)
    monkeypatch.setitem(Lake.transact.__kwdefaults__, "policy",
                        RetryPolicy(attempts=3, base=0.001, cap=0.01))
    with Store.open(lake_db, command="prompts import") as store, \
            Store.open(lake_db, command="racer") as other:
        racers = _race_every_insert(monkeypatch, other, tmp_path)
        serial = Store.transact
        monkeypatch.setattr(Store, "transact", lambda self, fn, **_: serial(self, fn))
        with pytest.raises(CommitConflict, match="gave up after 3 commit conflicts"):
            import_prompts(store, big)
    assert len(racers) == 3
