"""The batch path's own overhead against the online path's ledger overhead, same run.

Boundary: everything selfevo does around N requests, without the network and without the
model. Each phase runs in its own fresh process (so its peak RSS is its own), on a fresh
store, with the same N distinct chat requests (~60-byte prompts, as collect's are longer,
this is the per-request overhead at its highest relative share):

* **online** — ``Ledger.complete`` with an in-process backend that answers at once through
  the online protocol (``before_send`` per request, so pending rows are registered in the
  window the OpenAI backend gets; ``on_result`` per answer): look-up, pending-before-send,
  completion, attempts, the writer thread — the ledger's overhead per request;
* **batch write** — ``Ledger.complete`` in ``--mode file``: look-up, Batch JSONL shards
  (50,000 requests each), pending calls + ``batches`` + ``batch_calls`` registered per
  shard — what ``--mode batch`` does before the upload;
* **batch settle** — ``selfevo batches ingest`` of the shards' answers (written, untimed,
  by an in-process stand-in for ``vllm run-batch``, shuffled): parse, the online path's
  checks, calls + attempts + links per chunk — what settling a downloaded output does.

Peak RSS (``ru_maxrss`` of each phase's process) at two sizes shows what streams: settling
holds one chunk, so its memory is flat in N; the two ``Ledger.complete`` phases hold the
caller's N requests (the API takes a list), so theirs grows alike.

    flock /tmp/selfevo-bench.lock .venv/bin/python bench/batch_bench.py --sizes 20000,100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def requests(n: int) -> list:
    """N distinct chat requests (what the ledger keys and sends)."""
    from generation.backends.base import ChatRequest
    from generation.ledger import Call

    return [Call(ChatRequest([{"role": "user", "content": f"Tom has {i} pens and buys 2 more. "
                                                          "How many pens?"}],
                             {"temperature": 0.0, "max_tokens": 64}), "response")
            for i in range(n)]


def instant_backend() -> object:
    """An in-process backend speaking the online protocol, answering at once."""
    from generation.backends.base import AttemptInfo, Backend, ChatResult

    class Instant(Backend):
        spec, endpoint, announces_sends = "openai:bench", "http://bench/v1", True

        @property
        def concurrency(self) -> int:
            return 64

        def generate(self, reqs, on_result=None, before_send=None):
            out = []
            for i, _ in enumerate(reqs):
                wait = before_send(i) if before_send else None
                if wait is not None:
                    wait()
                r = ChatResult(ok=True, text=f"The answer is {i}.", finish_reason="stop",
                               prompt_tokens=20, completion_tokens=6, latency=0.001, cost=0.0,
                               attempts=[AttemptInfo(1, "ok", 0.001, 200)])
                if on_result:
                    on_result(i, r)
                out.append(r)
            return out

    return Instant()


def phase(name: str, n: int, db: str, work: str) -> dict:
    """Run one phase in this process; its wall seconds and peak RSS."""
    # Every import before the clock starts: a phase is timed, not the interpreter.
    from corpus.store import Store
    from generation.backends.openai_backend import OpenAIBackend, OpenAIOptions
    from generation.batches import BatchOptions
    from generation.batches.commands import ingest_files
    from generation.batches.completion import BatchCompletion  # noqa: F401
    from generation.ledger import Ledger

    calls = requests(n) if name != "settle" else None
    backend = (instant_backend() if name == "online" else OpenAIBackend.from_spec(
        "openai:bench@http://bench/v1", OpenAIOptions(require_key=False)))
    t0 = time.perf_counter()
    if name == "online":
        with Store.open(db) as store, store.run("bench", {}) as run, \
                Ledger(store, run.run_id) as ledger:
            ledger.complete(backend, calls)
    elif name == "write":
        with Store.open(db) as store, store.run("bench", {}) as run, \
                Ledger(store, run.run_id, batch=BatchOptions(mode="file", dir=work)) as ledger:
            ledger.complete(backend, calls)
            assert ledger.waiting
    else:
        outs = sorted(str(p) for p in Path(work).glob("*.out.jsonl"))
        result = ingest_files(db, outs)
        assert result.total.ok == n and result.still_pending == 0, result.total
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def engine(work: str) -> None:
    """Answer every shard as ``vllm run-batch`` would (output lines shuffled)."""
    for shard in Path(work).glob("b*.jsonl"):
        if ".out." in shard.name:
            continue
        lines = []
        for k, raw in enumerate(shard.read_text().splitlines()):
            req = json.loads(raw)
            body = {"id": f"c{k}", "object": "chat.completion", "model": req["body"]["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": f"The answer is {k}."}}],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26}}
            lines.append(json.dumps({"id": f"vllm-{k}", "custom_id": req["custom_id"],
                                     "response": {"status_code": 200, "request_id": f"r{k}",
                                                  "body": body}, "error": None}))
        random.Random(0).shuffle(lines)
        shard.with_name(shard.stem + ".out.jsonl").write_text("\n".join(lines) + "\n")


def child(name: str, n: int, db: str, work: str) -> dict:
    """Run a phase in a fresh process; its result."""
    cp = subprocess.run([sys.executable, __file__, "--child", name, "--n", str(n), "--db", db,
                         "--work", work], capture_output=True, text=True, check=False)
    if cp.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{cp.stderr[-3000:]}")
    return json.loads(cp.stdout.strip().splitlines()[-1])


def measure(n: int) -> dict:
    """Every phase at size ``n``."""
    with tempfile.TemporaryDirectory(prefix="selfevo-batch-bench-") as tmp:
        online = child("online", n, os.path.join(tmp, "online.duckdb"), tmp)
        work = os.path.join(tmp, "shards")
        db = os.path.join(tmp, "batch.duckdb")
        write = child("write", n, db, work)
        engine(work)
        settle = child("settle", n, db, work)
    return {"n": n, "online": online, "write": write, "settle": settle}


def table(results: Sequence[dict]) -> str:
    """The results as a markdown table."""
    head = ("| N | online ledger s | batch write s | batch settle s | batch total s | "
            "batch / online | µs / request (online, batch) | peak RSS MB (online, write, settle) |")
    rows = [head, "|" + "---|" * 8]
    for r in results:
        o, w, s = r["online"], r["write"], r["settle"]
        total = w["seconds"] + s["seconds"]
        rows.append(
            f"| {r['n']:,} | {o['seconds']:.1f} | {w['seconds']:.1f} | {s['seconds']:.1f} | "
            f"{total:.1f} | {total / o['seconds']:.2f} | {1e6 * o['seconds'] / r['n']:.0f}, "
            f"{1e6 * total / r['n']:.0f} | {o['rss_mb']:.0f}, {w['rss_mb']:.0f}, "
            f"{s['rss_mb']:.0f} |")
    return "\n".join(rows)


def main() -> None:
    """Measure each size, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,100000", help="comma-separated request counts")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(phase(args.child, args.n, args.db, args.work)))
        return
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        results.append(measure(n))
        print(f"measured N={n:,}", file=sys.stderr)
    print(table(results))


if __name__ == "__main__":
    main()
