"""Concurrent exports to one --out (defect 9) and a full disk under import, export and
collect (defect 11): one line, a final run state, nothing half-written."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from children import child
from faults import fill, small_disk
from test_export import _store_with_snapshot, _tree_bytes

from corpus import Store
from corpus.export import verify_export
from corpus.snapshots import create_snapshot

REPO = Path(__file__).resolve().parent.parent


def _export_cmd(db: str, name: str, out: Path, fmt: str = "parquet") -> list[str]:
    return [sys.executable, "-m", "selfevo.cli", "snapshot", "export", name, "--format", fmt,
            "--out", str(out), "--db", db]


def _two_snapshots(db: str) -> None:
    _store_with_snapshot(db)
    with Store.open(db) as store:
        create_snapshot(store, "qa", "kind = 'qa'")


@pytest.mark.parametrize("round_", range(3))
def test_two_exports_racing_to_one_out_never_both_succeed_silently(db, tmp_path, round_):
    """Defect 9: two exports of different snapshots to one --out both exited 0."""
    _two_snapshots(db)
    out = tmp_path / "out"
    with contextlib.ExitStack() as running:
        procs = {name: running.enter_context(child(
            _export_cmd(db, name, out), cwd=REPO, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)) for name in ("all", "qa")}
        results = {name: (p.wait(timeout=120), p.stderr.read()) for name, p in procs.items()}
    winners = [n for n, (rc, _) in results.items() if rc == 0]
    assert len(winners) == 1, results
    loser = next(n for n in results if n not in winners)
    assert "is not empty and is not an export of snapshot" in results[loser][1]
    manifest = verify_export(out)
    assert manifest.name == winners[0]


def test_an_export_that_waited_rechecks_the_destination(db, tmp_path):
    """The second export waits on the destination's lock, then sees what the first wrote."""
    _two_snapshots(db)
    out = tmp_path / "out"
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # an export in progress into tmp_path
    with child(_export_cmd(db, "all", out), cwd=REPO, text=True, stdout=subprocess.PIPE,
               stderr=subprocess.PIPE) as waiting:
        try:
            assert "waiting for another export" in waiting.stderr.readline()
            with Store.open_readonly(db) as store:  # meanwhile the holder writes its export
                from corpus.export import _export_into
                from corpus.snapshots import get_snapshot
                from schemas.conversation import resolve_layouts

                _export_into(store, get_snapshot(store, "qa"), "parquet", out, resolve_layouts())
        finally:
            os.close(fd)
        assert waiting.wait(timeout=120) == 1
        assert "not an export of snapshot 'all'" in waiting.stderr.read()
    assert verify_export(out).name == "qa"


def test_same_snapshot_racing_twice_gives_one_identical_export(db, tmp_path):
    _store_with_snapshot(db)
    out = tmp_path / "out"
    with contextlib.ExitStack() as running:
        procs = [running.enter_context(child(_export_cmd(db, "all", out), cwd=REPO,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE))
                 for _ in range(3)]
        for p in procs:
            p.communicate(timeout=120)
        assert [p.returncode for p in procs] == [0, 0, 0]
    verify_export(out)
    again = tmp_path / "again"
    assert subprocess.run(_export_cmd(db, "all", again), cwd=REPO).returncode == 0
    assert _tree_bytes(out) == _tree_bytes(again)


def test_another_format_of_the_same_snapshot_is_not_silently_replaced(cli, db, tmp_path):
    _store_with_snapshot(db)
    out = tmp_path / "out"
    cli("snapshot", "export", "all", "--format", "parquet", "--out", str(out), "--db", db)
    before = _tree_bytes(out)
    res = cli("snapshot", "export", "all", "--format", "jsonl", "--out", str(out), "--db", db,
              exit_code=1)
    assert "holds an export of 'all' as parquet" in res.output
    assert _tree_bytes(out) == before


def _one_line_error(output: str, *words: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "Traceback" not in output and all(w in output for w in words), output


def _big_jsonl(path: Path, n: int) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"Question {i}: how many apples does Ann have?",
                                "gold_answer": str(i)}) + "\n")
    return path


def test_disk_full_during_import_is_one_line_and_the_run_failed(cli, tmp_path):
    src = _big_jsonl(tmp_path / "big.jsonl", 60_000)
    with small_disk(tmp_path / "disk", 3072) as disk:
        db = str(disk / "s.duckdb")
        cli("init", "--db", db)
        out = cli("prompts", "import", str(src), "--db", db, exit_code=1).output
        _one_line_error(out, "disk full", "free some space")
        with Store.open(db) as store:  # the next writer: the run is failed, never 'killed'
            assert store.query("SELECT status FROM runs") == [("failed",)]
            assert "disk full" in store.query("SELECT error FROM runs")[0][0]
            assert store.query("SELECT count(*) FROM prompts") == [(0,)]


def test_disk_full_with_no_room_even_for_the_run_row(cli, tmp_path):
    src = _big_jsonl(tmp_path / "small.jsonl", 10)
    with small_disk(tmp_path / "disk", 2048) as disk:
        db = str(disk / "s.duckdb")
        cli("init", "--db", db)
        ballast = fill(disk, 0)
        out = cli("prompts", "import", str(src), "--db", db, exit_code=1).output
        _one_line_error(out, "disk full")
        ballast.unlink()
        with Store.open(db) as store:
            assert store.query("SELECT count(*) FROM runs WHERE status = 'running'") == [(0,)]
            assert store.query("SELECT count(*) FROM prompts") == [(0,)]


def test_disk_full_during_export_leaves_nothing(cli, db, tmp_path):
    _store_with_snapshot(db)
    with small_disk(tmp_path / "disk", 64) as disk:
        fill(disk, 4)
        out = cli("snapshot", "export", "all", "--out", str(disk / "exp"), "--db", db,
                  exit_code=1).output
        _one_line_error(out, "disk full")
        assert sorted(p.name for p in disk.iterdir()) == ["ballast"]


def test_disk_full_during_collect_is_one_line_and_the_run_failed(cli, server, tmp_path):
    from test_collect import collect_args, seed

    server.handler = lambda body, k: None
    with small_disk(tmp_path / "disk", 4096) as disk:
        db = str(disk / "s.duckdb")
        seed(db, 120)
        fill(disk, 160)
        out = cli(*collect_args(db, server), exit_code=1).output
        assert "disk full" in out and "Traceback" not in out, out
        assert out.strip().splitlines()[-1].startswith("Error: "), out
        (disk / "ballast").unlink()
        with Store.open(db) as store:
            status, error = store.query(
                "SELECT status, error FROM runs WHERE command = 'collect'")[0]
            assert status == "failed" and "disk full" in error
            # what was committed before the disk filled is kept and consistent
            assert store.query("SELECT count(*) FROM records r LEFT JOIN calls c "
                               "ON c.call_id = r.response_call_id "
                               "WHERE r.response_call_id IS NOT NULL AND c.call_id IS NULL"
                               ) == [(0,)]
