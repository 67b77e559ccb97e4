"""A small store for the SQL-condition tests: prompts, records of every kind, decisions."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

from backends import writing

from corpus.records import insert_prompts, insert_records, make_prompt, make_record
from corpus.store import Store


def build_store(db: str, n: int = 12) -> list[str]:
    """``n`` labelled prompts (train/test), one record each (meta/self/qa, rounds 0-2) and a
    verdict filter run over them; returns the record ids, sorted."""
    from curation.curate import run_filters
    from curation.filters.base import parse_step
    from curation.selection import Selection

    kinds = ("meta", "self", "qa")
    ids = []
    with Store.open(db, command="test") as store:
        with store.run("test", {}) as run, writing(store) as con:
            for i in range(n):
                p = make_prompt(f"Ann has {i} apples and gets {i + 1} more. How many? é{i}",
                                gold_answer=str(2 * i + 1), source="test",
                                split="train" if i % 3 else "test")
                verdict = "correct" if i % 2 else "incorrect"
                r = make_record(prompt_id=p["prompt_id"], kind=kinds[i % 3], round=i % 3,
                                response=f"The answer is {2 * i + 1}.",
                                feedback=f"Checked.\nVerdict: {verdict}", verdict=verdict,
                                refinement=f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}")
                insert_prompts(con, [p], run.run_id)
                insert_records(con, [r], run.run_id)
                ids.append(r["record_id"])
        run_filters(store, [parse_step("verdict")], Selection())
    return sorted(ids)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


TABLES = ("prompts", "records", "calls", "attempts", "runs", "decisions", "snapshots",
          "snapshot_records", "evals", "eval_items", "models")


def store_rows(db: str) -> dict[str, list[tuple]]:
    """Every row of the store's tables, sorted: equal before and after means nothing changed."""
    with Store.open_readonly(db) as store:
        return {t: sorted(map(repr, store.query(f"SELECT * FROM {t}"))) for t in TABLES}


@contextlib.contextmanager
def recording_server() -> Iterator[tuple[str, list[str]]]:
    """(base URL, paths requested so far) of a local HTTP server that answers 404 to all."""
    hits: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    finally:
        srv.shutdown()
        srv.server_close()
