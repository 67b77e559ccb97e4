"""Throughput of ``selfevo collect`` against a plain asyncio + openai loop, same server, same run.

A local OpenAI-compatible server (tests/openai_server.py, its own process) answers every
request after a fixed latency (default 100 ms). For each concurrency:

* (a) **collect**: ``run_collect`` (what ``selfevo collect`` runs, in-process so both share
  the interpreter's warm imports) over N/3 prompts with an ``openai:`` responder and teacher:
  3 dependent calls per prompt (three stages), every call pending-before-send, completed,
  attempts, records, runs — full persistence in a fresh DuckDB store; timed from opening the
  store to closing it;
* (b) **plain**: ``AsyncOpenAI(max_retries=0)`` + a semaphore sending the very requests (a)
  sent (read back from its ledger) as one flat batch, storing nothing — the bare client's
  ceiling on this machine, with its default httpx2 stack, and on the aiohttp transport that
  selfevo uses;

and the physical limit ``concurrency / latency``. Each concurrency runs ``--repeat`` rounds
(a fresh store each), the contenders interleaved; the table shows each one's best. Then a fully cached re-run of ``--cached``
prompts, timed in-process and as a ``selfevo collect`` subprocess (interpreter start and
imports included).

    flock /tmp/selfevo-bench.lock .venv/bin/python bench/collect_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    """The test server in its own process; returns (process, base URL)."""
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "openai_server.py"),
                             "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


async def plain_loop(url: str, requests: list[dict], concurrency: int,
                     transport: str = "httpx") -> float:
    """Seconds to send ``requests`` (model/messages/params dicts) with the bare client.

    ``httpx``: the client exactly as documented (its default HTTP stack); ``aiohttp``: the
    same loop on openai's aiohttp transport with the connection limits collect's backend
    uses — the transport selfevo uses by default (``--transport auto``), so the strongest
    same-stack baseline.
    """
    import httpx2
    import openai

    # the connection pool collect's backend opens (OpenAIBackend._setup): same transport,
    # same limits, so the two differ only in what collect does around each request
    limits = httpx2.Limits(max_connections=concurrency + 4,
                           max_keepalive_connections=concurrency + 4)
    http = (openai.DefaultAioHttpClient(limits=limits, timeout=60) if transport == "aiohttp"
            else None)
    client = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=60,
                                http_client=http)
    sem = asyncio.Semaphore(concurrency)

    async def one(req: dict) -> str | None:
        async with sem:
            r = await client.chat.completions.create(**req)
            return r.choices[0].message.content

    t = time.perf_counter()
    out = await asyncio.gather(*(one(r) for r in requests))
    dt = time.perf_counter() - t
    await client.close()
    assert all(out)
    return dt


def sent_requests(db: str) -> list[dict]:
    """The requests a collection sent, read back from its ledger (for the plain loop)."""
    import json

    from corpus.store import Store

    with Store.open_readonly(db) as store:
        rows = store.query("SELECT model, messages, params FROM calls ORDER BY created_at")
    return [{"model": m.split(":", 1)[1], "messages": json.loads(msgs), **json.loads(params)}
            for m, msgs, params in rows]


def make_store(path: str, n_prompts: int) -> None:
    """A store with n synthetic prompts (no benchmark text)."""
    from corpus.records import insert_prompts, make_prompt
    from corpus.store import Store

    with Store.open(path, command="bench") as store, store.run("bench", {}) as run:
        rows = [make_prompt(f"Ann has {i} apples and buys {i + 3} more. How many now?",
                            gold_answer=str(2 * i + 3), source="bench") for i in range(n_prompts)]
        with store.transaction() as con:
            insert_prompts(con, rows, run.run_id)


def collect_once(db: str, url: str, concurrency: int) -> tuple[float, int, int]:
    """(seconds, requests sent, records) of one in-process collection."""
    from generation.backends.openai_backend import OpenAIOptions
    from generation.collect import CollectConfig, run_collect

    cfg = CollectConfig(teacher=f"openai:teacher@{url}", responder=f"openai:student@{url}",
                        max_tokens=256, options=OpenAIOptions(concurrency=concurrency, timeout=60))
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_collect(db, cfg)
    dt = time.perf_counter() - t
    return dt, summary.sent, summary.records  # type: ignore[union-attr]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--requests-c1", type=int, default=150, help="requests at concurrency 1")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--cached", type=int, default=2000, help="prompts in the cached re-run")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds per concurrency, interleaved; each contender's best is shown")
    args = ap.parse_args()

    import openai  # noqa: F401 - warm the import for both contenders

    proc, url = start_server(args.latency)
    tmp = tempfile.mkdtemp(prefix="collect-bench-")
    rows = []
    try:
        for c in [int(x) for x in args.concurrency.split(",")]:
            n = args.requests_c1 if c == 1 else args.requests
            best = {"collect": float("inf"), "httpx": float("inf"), "aiohttp": float("inf")}
            for k in range(args.repeat):  # interleaved: load swings hit every contender
                db = os.path.join(tmp, f"c{c}-{k}.duckdb")  # a fresh store each time
                make_store(db, n // 3)
                coll_s, sent, records = collect_once(db, url, c)
                best["collect"] = min(best["collect"], coll_s)
                # (b) sends exactly the requests (a) sent, as one flat batch.
                reqs = sent_requests(db)
                for transport in ("httpx", "aiohttp"):
                    best[transport] = min(best[transport],
                                          asyncio.run(plain_loop(url, reqs, c, transport)))
            coll_s, plain_s, plain_aio_s = best["collect"], best["httpx"], best["aiohttp"]
            limit = c / args.latency
            n = len(reqs)
            plain_rps, aio_rps, coll_rps = n / plain_s, n / plain_aio_s, sent / coll_s
            rows.append((c, n, sent, limit, plain_rps, aio_rps, coll_rps, records))

        db = os.path.join(tmp, "cached.duckdb")
        make_store(db, args.cached)
        warm_s, warm_sent, _ = collect_once(db, url, 64)
        cached_s, resent, cached_records = collect_once(db, url, 64)
        t = time.perf_counter()
        cp = subprocess.run(
            [sys.executable, "-m", "selfevo.cli", "collect", "--db", db,
             "--teacher", f"openai:teacher@{url}", "--responder", f"openai:student@{url}",
             "--max-tokens", "256", "--concurrency", "64"],
            cwd=REPO, capture_output=True, text=True)
        sub_s = time.perf_counter() - t
        assert cp.returncode == 0, cp.stderr[-2000:]
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nselfevo collect vs plain asyncio+openai; server latency {args.latency * 1000:.0f} ms"
          f" ({os.cpu_count()} CPUs)\n")
    print("| concurrency | requests (plain / collect) | physical limit req/s "
          "| (b) plain httpx req/s | plain aiohttp req/s | (a) collect req/s "
          "| (a)/plain aiohttp (goal >= 0.95) | (a)/(b) | (a)/limit |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, n, sent, limit, p, aio, a, _ in rows:
        print(f"| {c} | {n} / {sent} | {limit:.0f} | {p:.1f} | {aio:.1f} | {a:.1f} "
              f"| {a / aio:.2f} | {a / p:.2f} | {a / limit:.2f} |")
    print(f"\nfully cached re-run of {args.cached} prompts ({3 * args.cached} cached calls, "
          f"{cached_records} records, {resent} requests sent): {cached_s:.2f} s in-process, "
          f"{sub_s:.2f} s as a `selfevo collect` subprocess (first run: {warm_sent} requests in "
          f"{warm_s:.1f} s)")


if __name__ == "__main__":
    main()
