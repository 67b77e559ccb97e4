"""``selfevo demo``: a store with generated prompts and qa records, a snapshot and its export."""

from __future__ import annotations

import pyarrow.parquet as pq

from corpus import Store
from corpus.export import verify_export
from schemas.conversation import record_messages


def _export_bytes(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_demo_builds_store_snapshot_and_export_and_reruns_cleanly(cli, tmp_path):
    out = tmp_path / "demo"
    first = cli("demo", "--out", str(out), "--n", "12", "--seed", "3").output
    assert "(12 prompts, 12 records)" in first and "snapshot   demo-qa " in first
    assert first.count("selfevo sql --db") >= 3
    db = out / "selfevo.duckdb"
    with Store.open_readonly(db) as store:
        kinds = store.query("SELECT kind, count(*) FROM records GROUP BY 1")
        gold = store.query("SELECT count(*) FROM records_full WHERE response LIKE "
                           "'%The answer is ' || gold_answer || '.'")
        snaps = store.query("SELECT name, n FROM snapshots")
        runs = store.query("SELECT DISTINCT status FROM runs")
    assert kinds == [("qa", 12)] and gold == [(12,)]
    assert snaps == [("demo-qa", 12)] and runs == [("ok",)]
    export = out / "exports" / "demo-qa"
    manifest = verify_export(export)
    assert manifest.n == 12 and manifest.counts["kind"] == {"qa": 12}
    rows = pq.read_table(export / "records.parquet").to_pylist()
    assert len(rows) == 12
    for row in rows:
        assert row["messages"] == record_messages(
            kind="qa", prompt=row["prompt"], response=row["response"], feedback=None,
            refinement=None)
        assert row["messages"][-1]["train"] is True
    before = _export_bytes(export)

    again = cli("demo", "--out", str(out), "--n", "12", "--seed", "3").output
    assert "(12 prompts, 12 records)" in again and "snapshot   demo-qa " in again
    assert _export_bytes(export) == before
    with Store.open_readonly(db) as store:
        assert store.query("SELECT count(*) FROM snapshots") == [(1,)]

    # More problems: the immutable demo-qa stays, a new snapshot holds the bigger selection.
    more = cli("demo", "--out", str(out), "--n", "15", "--seed", "3").output
    assert "(15 prompts, 15 records)" in more and "snapshot   demo-qa-" in more
    with Store.open_readonly(db) as store:
        assert sorted(store.query("SELECT n FROM snapshots")) == [(12,), (15,)]
