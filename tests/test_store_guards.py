"""The store refuses what would damage it (issue 12, defects 8 and 11).

The job lock names the file, not the path; a foreign DuckDB file, a newer selfevo's store and an
unwritable location are refused in one line before anything is written; a killed run's counts
are the rows it committed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest
from backends import file_store
from children import child, reap, spawn

from corpus import Store
from corpus.errors import CorpusError, StoreBusy
from corpus.migrations import MIGRATIONS

REPO = Path(__file__).resolve().parent.parent

LIVE_RUN = textwrap.dedent(
    """
    import sys, time
    from corpus import Store
    s = Store.open(sys.argv[1], command="collect")
    run = s.start_run("collect", {})
    with s.transaction() as con:  # a call in flight, as the issue's live collect had 108
        con.execute("INSERT INTO calls (call_id, model, messages, params, status, run_id) "
                    "VALUES ('c1', 'm', '[]', '{}', 'pending', ?)", [run.run_id])
    print("ready", flush=True)
    sys.stdin.readline()  # hold the store until the test says so
    with s.transaction() as con:
        con.execute("UPDATE calls SET status = 'ok' WHERE call_id = 'c1'")
    s.finish_run(run)
    s.close()
    """
)


def _aliases(db: str, tmp_path: Path) -> dict[str, str]:
    """Other names of the same store file: symlink, hard link, '..' path, relative path."""
    real = Path(db)
    (tmp_path / "sub").mkdir(exist_ok=True)
    link = tmp_path / "link.duckdb"
    link.symlink_to(real)
    hard = tmp_path / "sub" / "hard.duckdb"
    os.link(real, hard)
    return {"symlink": str(link), "hard link": str(hard),
            "dotdot": str(tmp_path / "sub" / ".." / real.name),
            "relative": os.path.relpath(real)}


@file_store("the file's writer lock")
def test_no_alias_of_the_file_lets_a_second_writer_in(db, tmp_path):
    """Defect 8: through a symlink a second writer got in, marked the live run killed and
    flagged its in-flight calls possibly billed."""
    Store.open(db).close()
    aliases = _aliases(db, tmp_path)
    live = spawn([sys.executable, "-c", LIVE_RUN, db], stdin=subprocess.PIPE,
                 stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert live.stdout.readline().strip() == "ready"
        for name, alias in aliases.items():
            with pytest.raises(StoreBusy, match=r"in use by PID \d+ \(collect\)"):
                Store.open(alias)
            print(name, "refused")
        live.stdin.write("go\n")
        live.stdin.flush()
        assert live.wait(timeout=60) == 0
    finally:
        reap(live)
    with Store.open(aliases["symlink"]) as store:
        assert store.query("SELECT status FROM runs") == [("ok",)]
        assert store.query("SELECT status, possibly_billed FROM calls") == [("ok", False)]


@file_store("the file's writer lock")
def test_a_bind_mount_of_the_directory_is_the_same_store(db, tmp_path):
    Store.open(db).close()
    view = tmp_path / "view"
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(tmp_path), str(view)],
                      capture_output=True).returncode != 0:
        pytest.skip("mount --bind needs root")
    try:
        with Store.open(db, command="holder"):
            with pytest.raises(StoreBusy, match="holder"):
                Store.open(view / Path(db).name)
    finally:
        subprocess.run(["umount", str(view)], check=True)


RACER = textwrap.dedent(
    """
    import json, sys, time
    from corpus import Store
    from corpus.errors import StoreBusy
    deadline = time.monotonic() + float(sys.argv[3])
    spans = []
    while time.monotonic() < deadline:
        try:
            s = Store.open(sys.argv[1], command=sys.argv[2], wait=5)
        except StoreBusy:
            time.sleep(0.01)
            continue
        t0 = time.time()
        run = s.start_run("race", {})
        time.sleep(0.05)
        s.finish_run(run)
        t1 = time.time()
        s.close()
        spans.append([t0, t1])
    print(json.dumps(spans))
    """
)


@file_store("the file's writer lock")
def test_concurrent_writers_through_different_names_never_overlap(db, tmp_path):
    """Processes opening one store by five names take turns: their held intervals never
    overlap, and no live run was ever reaped as killed."""
    Store.open(db).close()
    names = [db, *_aliases(db, tmp_path).values()]
    spans = []
    with contextlib.ExitStack() as running:
        procs = [running.enter_context(child([sys.executable, "-c", RACER, name, f"w{i}", "4"],
                                             stdout=subprocess.PIPE, text=True, cwd=REPO))
                 for i, name in enumerate(names)]
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            spans += json.loads(out)
    spans.sort()
    assert len(spans) >= 2
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, "two writers held the store at once"
    with Store.open(db) as store:
        assert store.query("SELECT DISTINCT status FROM runs") == [("ok",)]


def test_a_new_store_created_by_two_names_at_once_has_one_creator(tmp_path):
    """Before the file exists only the path lock can meet: realpath makes it one lock."""
    db = tmp_path / "new.duckdb"
    link = tmp_path / "alias.duckdb"
    link.symlink_to(db)  # dangling until the store is created
    first = Store.open(db, command="creator")
    try:
        with pytest.raises(StoreBusy, match="creator"):
            Store.open(link)
    finally:
        first.close()


@pytest.mark.parametrize("where", ["/proc/x", "/proc/self/no/such/store.duckdb",
                                   "readonly"])
def test_an_unwritable_location_is_one_line(cli, tmp_path, where, monkeypatch):
    """Defect 11: SELFEVO_DB=/proc/x or a read-only directory raised a traceback."""
    if where == "readonly":
        ro = tmp_path / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                          capture_output=True).returncode != 0:
            pytest.skip("mounting a read-only tmpfs needs root")
        where = str(ro / "store.duckdb")
    monkeypatch.setenv("SELFEVO_DB", where)
    try:
        out = cli("prompts", "generate", "--n", "3", exit_code=1).output
    finally:
        if "/ro/" in where:
            subprocess.run(["umount", str(Path(where).parent)], check=True)
    assert out.startswith("Error: ") and len(out.strip().splitlines()) == 1, out
    assert "--db" in out and "Traceback" not in out


def test_a_foreign_duckdb_file_is_refused_before_anything_is_written(cli, tmp_path):
    """Defect 11: migrating left _migrations (and selfevo's tables) in someone else's file."""
    theirs = tmp_path / "theirs.duckdb"
    con = duckdb.connect(str(theirs))
    con.execute("CREATE TABLE sales (id INTEGER, amount DOUBLE); INSERT INTO sales VALUES (1, 2.5)")
    con.close()
    before = theirs.read_bytes()
    for args in (["init"], ["prompts", "generate", "--n", "2"]):
        out = cli(*args, "--db", str(theirs), exit_code=1).output
        assert "not a selfevo store" in out and "sales" in out
        assert len(out.strip().splitlines()) == 1
    assert theirs.read_bytes() == before
    with duckdb.connect(str(theirs), read_only=True) as con:  # closed: the CLI opens its own
        assert con.execute("SELECT table_name FROM information_schema.tables").fetchall() == [
            ("sales",)]
    out = cli("sql", "SELECT 1", "--db", str(theirs), exit_code=1).output
    assert "not a selfevo store" in out


@file_store("writes the file's schema version directly (newer lakes: test_lake_store)")
def test_a_store_of_a_newer_schema_is_refused_for_writing(cli, db):
    """Defect 11: an older selfevo wrote to a newer store without complaint."""
    Store.open(db).close()
    con = duckdb.connect(db)
    con.execute("INSERT INTO _migrations (name) VALUES ('m999_from_the_future')")
    con.close()
    with pytest.raises(CorpusError, match=r"newer selfevo \(m999_from_the_future\).*upgrade"):
        Store.open(db)
    out = cli("prompts", "generate", "--n", "2", "--db", db, exit_code=1).output
    assert "upgrade selfevo" in out and len(out.strip().splitlines()) == 1
    assert Store.open_readonly(db).query("SELECT count(*) FROM runs") == [(0,)]
    # reading still works: the rows it knows mean what they meant
    assert cli("sql", "SELECT count(*) AS n FROM prompts", "--db", db).exit_code == 0


def test_an_empty_duckdb_file_becomes_a_store(tmp_path):
    path = tmp_path / "empty.duckdb"
    duckdb.connect(str(path)).close()
    with Store.open(path) as store:
        assert len(store.query("SELECT * FROM _migrations")) == len(MIGRATIONS)


COMMIT_THEN_DIE = textwrap.dedent(
    """
    import os, sys
    from corpus import Store
    from corpus.records import insert_prompts, make_prompt
    s = Store.open(sys.argv[1], command="doomed")
    run = s.start_run("prompts import", {})
    with s.transaction() as con:
        insert_prompts(con, [make_prompt(f"q{i}") for i in range(7)], run.run_id)
    os.kill(os.getpid(), 9)
    """
)


@file_store("reaping under the file's job lock (on a lake: test_lake_faults)")
def test_a_killed_runs_counts_are_the_rows_it_committed(db):
    """Defect 11: work committed just before a kill stays owned by a run marked killed. The
    run stays 'killed' (it did not finish) and its counts say what of it is in the store."""
    Store.open(db).close()
    assert subprocess.run([sys.executable, "-c", COMMIT_THEN_DIE, db], cwd=REPO).returncode == -9
    with Store.open(db) as store:
        (status, counts, error), = store.query("SELECT status, counts, error FROM runs")
        assert status == "killed" and json.loads(counts) == {"prompts": 7}
        assert "committed rows are kept" in error
        assert store.query("SELECT count(*) FROM prompts") == [(7,)]


@file_store("the file's lock file")
def test_last_words_in_the_lock_file_mark_a_run_failed_not_killed(db):
    """When the store refuses even the final UPDATE (a full disk), the run's state goes to the
    lock file and the next writer applies it."""
    store = Store.open(db, command="job")
    run = store.start_run("collect", {})
    assert store._lock.leave_last_word(run.run_id, "failed", "disk full: x")
    store._lock.release()  # as if the process died here, its run still 'running'
    store._lock = None
    store.close()
    time.sleep(0.01)
    with Store.open(db) as again:
        assert again.query("SELECT status, error FROM runs") == [("failed", "disk full: x")]
