"""The job lock: one writing selfevo process per store FILE, whatever path names it; on a
DuckLake, leases on the items of a job (:func:`lake_lease`).

A lock keyed by the path string let a second writer in through a symlink, ``a/../store``, a
hard link or a bind path; that writer then marked the live run ``killed``. The lock is now
two ``flock``\\ s, both taken before anything is written:

* the **path lock** ``<real path>.lock`` beside the store, the path with symlinks and ``..``
  resolved. It exists before the store does, so two processes creating one new store by two
  names still meet there;
* the **identity lock** ``<lock dir>/<device>-<inode>.lock``, taken as soon as the store file
  exists. Every name of one file (hard links, bind mounts) has the same device and inode.
  The lock dir is ``$SELFEVO_LOCK_DIR`` or ``<tmp>/selfevo-locks``, shared by all users.

Why not ``flock`` the database file itself: closing any descriptor of a file drops every
POSIX lock the process holds on it, DuckDB's own included, and on NFS Linux emulates
``flock`` with those very POSIX locks, so it would fight DuckDB's lock.

Each lock file is :data:`RESERVED` bytes, written in place (never truncated), holding the
holder (``PID 12 (collect)``) and the **last words** of its runs: the final state of a run
that could not be written to the store (a full disk refuses even that small UPDATE). The
bytes are already allocated, so writing them works on a full disk; the next writer reads
them and marks such a run ``failed`` (with its reason) rather than ``killed``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from corpus.errors import CorpusError, StoreBusy

if TYPE_CHECKING:
    from corpus.store import Store

LOCK_DIR_ENV = "SELFEVO_LOCK_DIR"
RESERVED = 4096  # bytes of each lock file: holder line + last words, padded with spaces


def lock_dir() -> Path:
    """Where identity locks live: ``$SELFEVO_LOCK_DIR`` or ``<tmp>/selfevo-locks``."""
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "selfevo-locks")


def real_path(path: str | os.PathLike[str]) -> Path:
    """The path with symlinks, ``.`` and ``..`` resolved (the file need not exist yet)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _unwritable(path: Path, exc: OSError) -> CorpusError:
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CorpusError(f"disk full: cannot write lock file {path}; free some space")
    return CorpusError(
        f"cannot create lock file {path} ({what}); a store needs a writable directory: "
        "pass --db (or set SELFEVO_DB) to a file in one"
    )


class JobLock:
    """The two locks of one writer (see the module docstring)."""

    def __init__(self, db: str | os.PathLike[str], command: str):
        self.db = real_path(db)
        self.command = command
        self.fds: dict[Path, int] = {}
        self.last_words: dict[str, list[str]] = {}  # run_id -> [status, error], from the dead
        self._mine: dict[str, list[str]] = {}  # this process's runs that the store refused

    @property
    def path_lock(self) -> Path:
        """``<real path of the store>.lock``."""
        return self.db.with_name(self.db.name + ".lock")

    def identity_lock(self) -> Path | None:
        """``<lock dir>/<device>-<inode>.lock`` of the store file (None while it does not exist)."""
        try:
            st = os.stat(self.db)
        except FileNotFoundError:
            return None
        return lock_dir() / f"{st.st_dev}-{st.st_ino}.lock"

    def acquire(self) -> None:
        """Take the path lock, and the identity lock when the store exists; StoreBusy if held."""
        self._take(self.path_lock)
        self.acquire_identity()

    def acquire_identity(self) -> None:
        """Take the identity lock once the store file exists (no-op if taken or still absent)."""
        path = self.identity_lock()
        if path is None or path in self.fds:
            return
        directory = path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if directory.stat().st_uid == os.getuid():
                os.chmod(directory, 0o1777)  # shared by all users, like /tmp
        except OSError as exc:
            raise CorpusError(
                f"cannot create lock directory {directory} ({exc.strerror}); set "
                f"{LOCK_DIR_ENV} to a writable directory"
            ) from None
        self._take(path)

    def _take(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            try:  # another user's lock file: flock needs only a descriptor
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise _unwritable(path, exc) from None
        except OSError as exc:
            raise _unwritable(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)[0] or "another process"
            os.close(fd)
            raise StoreBusy(
                f"store {self.db} is in use by {holder}; wait for it to finish or use "
                "another --db"
            ) from None
        self.fds[path] = fd
        _, words = self._read(fd)
        self.last_words.update(words)
        try:
            self._write(fd, {})
        except OSError as exc:
            self.release()
            raise _unwritable(path, exc) from None

    @staticmethod
    def _read(fd: int) -> tuple[str, dict[str, list[str]]]:
        text = os.pread(fd, RESERVED, 0).decode("utf-8", "replace")
        head, _, rest = text.partition("\n")
        words: dict[str, list[str]] = {}
        with contextlib.suppress(ValueError):
            loaded = json.loads(rest.strip() or "{}")
            if isinstance(loaded, dict):
                words = {k: v for k, v in loaded.items()
                         if isinstance(v, list) and len(v) == 2}
        return head.strip(), words

    def _write(self, fd: int, words: dict[str, list[str]]) -> None:
        text = f"PID {os.getpid()} ({self.command})\n" + json.dumps(words, ensure_ascii=True)
        data = text.encode()[: RESERVED - 1]
        os.pwrite(fd, data.ljust(RESERVED, b" "), 0)  # in place: no new blocks needed

    def leave_last_word(self, run_id: str, status: str, error: str) -> bool:
        """Record a run's final state in the lock files, for the next writer to apply; True
        when at least one lock file took it."""
        self._mine[run_id] = [status, error[:500]]
        done = False
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                self._write(fd, self._mine)
                done = True
        return done

    def release(self) -> None:
        """Release both locks (the OS also drops them when the process dies)."""
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        self.fds = {}


# -- leases on a DuckLake ----------------------------------------------------------------------
# A lake has no lock file: machines share it. A job that must not run twice on the same items
# (two `collect`s of one prompt would both send its calls) holds a lease per item in the
# `job_locks` table (m012). The lease of an item is held while its holder's run is `running`;
# liveness is the run's (heartbeat, or same host and PID alive: corpus.store.reap_stale_runs).


def lake_holders(con: duckdb.DuckDBPyConnection, run_id: str
                 ) -> list[tuple[str, str | None, int | None, int]]:
    """Live holders, other than ``run_id``, of any key in the ``_lease_keys`` view: (run id,
    host, pid, how many of the keys it holds), the largest share first."""
    return con.execute(
        "SELECT l.held_by, r.host, r.pid, count(*) FROM job_locks l "
        "JOIN runs r ON r.run_id = l.held_by WHERE r.status = 'running' AND l.held_by <> ? "
        "AND l.lock_key IN (SELECT lock_key FROM _lease_keys) "
        "GROUP BY ALL ORDER BY 4 DESC, 1", [run_id]).fetchall()


def take_lake_lease(con: duckdb.DuckDBPyConnection, keys: list[str], run_id: str,
                    what: str) -> None:
    """Inside one serial lake transaction: lease every key to ``run_id``, or raise StoreBusy
    naming a live holder (``what`` says what the keys are, e.g. "selected prompts").

    First the dead runs are reaped (stale heartbeat, or a dead PID on this host), so their
    leases are free; a lease whose run is no longer ``running`` is taken over. Two takers
    at once cannot both win: the transaction commits only if nothing else committed since
    its first read, and the loser re-runs it and sees the winner's rows.
    """
    import pyarrow as pa

    from corpus.store import reap_stale_runs  # corpus.store imports this module

    reap_stale_runs(con)
    con.register("_lease_keys", pa.table({"lock_key": pa.array(sorted(set(keys)), pa.string())}))
    try:
        holders = lake_holders(con, run_id)
        if holders:
            held_by, host, pid, n = holders[0]
            which = what if len(set(keys)) == 1 else f"{n} of the {what}"
            raise StoreBusy(
                f"{which} {'is' if which == what else 'are'} in use by run {held_by} on "
                f"{host or 'an unknown host'} (PID {pid}); wait for it to finish or choose "
                "others")
        con.execute("DELETE FROM job_locks WHERE lock_key IN (SELECT lock_key FROM _lease_keys)"
                    " OR held_by NOT IN (SELECT run_id FROM runs WHERE status = 'running')")
        con.execute("INSERT INTO job_locks (lock_key, held_by, taken_at) "
                    "SELECT lock_key, ?, now() FROM _lease_keys", [run_id])
    finally:
        con.unregister("_lease_keys")


def release_lake_lease(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Drop every lease ``run_id`` holds (its run ending frees them anyway)."""
    con.execute("DELETE FROM job_locks WHERE held_by = ?", [run_id])


@contextlib.contextmanager
def lake_lease(store: Store, keys: list[str], run_id: str, what: str) -> Iterator[None]:
    """Hold a lease on ``keys`` for the block (a lake only: a file store's job lock already
    keeps every other writer out). StoreBusy at once when a live run holds one of them.

    Released when the block ends normally. When it raises (an error, Ctrl-C) nothing more
    is written here: the run's final status frees the lease, and the next taker deletes it.
    """
    if not store.spec.is_lake:
        yield
        return
    store.transact(lambda con: take_lake_lease(con, keys, run_id, what))
    yield
    with contextlib.suppress(Exception):  # not released: freed when the run ends
        store.transact(lambda con: release_lake_lease(con, run_id))
