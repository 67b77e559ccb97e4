"""The Files and Batches endpoints of the local test server (tests/openai_server.py).

``/v1/files`` (multipart upload, list, retrieve, ``/content`` download) and ``/v1/batches``
(create, list newest first with ``after``/``limit`` paging, retrieve, cancel), enough for
the real ``openai`` client. Each created batch follows a :class:`BatchPlan` — from
``service.plans`` (one per batch created, in order), else ``service.default_plan`` — that
scripts its states (one step per retrieve: validating → in_progress → finalizing → a final
state), and what happens to each row: answered (the chat endpoint's deterministic answer),
an error status, missing, duplicated, expired. Output lines come in a shuffled order.

It counts, per distinct request body, the rows it answered successfully across every batch
(``answered``): the exactly-once assertions of the tests read it.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: ``row(custom_id, body, k) -> what``: "ok", "error:STATUS", "skip" (no line), "duplicate"
#: (answered twice), "expired" (an error line batch_expired), "empty" (empty content).
RowScript = Callable[[str, dict[str, Any], int], str]


@dataclass
class BatchPlan:
    """How the server runs one batch."""

    states: tuple[str, ...] = ("validating", "in_progress", "finalizing", "completed")
    row: RowScript | None = None  # None: every row "ok" ("expired" past half when expiring)
    extra_lines: list[dict[str, Any]] = field(default_factory=list)  # e.g. unknown custom_ids
    shuffle: bool = True
    errors: list[dict[str, Any]] = field(default_factory=list)  # a failed batch's errors.data
    vllm_errors: bool = False  # error lines as vllm run-batch writes them (message in "error")

    @classmethod
    def expiring(cls, answered: int) -> BatchPlan:
        """Expires with the first ``answered`` rows done and an error line for the rest."""
        return cls(("validating", "in_progress", "expired"),
                   row=lambda _c, _b, k: "ok" if k < answered else "expired")


@dataclass
class ServedBatch:
    """One batch the server holds."""

    id: str
    input_file_id: str
    metadata: dict[str, Any]
    plan: BatchPlan
    created_at: int
    step: int = 0
    status: str = "validating"
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    cancel: bool = False
    retrieves: int = 0


class BatchService:
    """State and handlers of the batch endpoints (thread-safe)."""

    def __init__(self, answer: Callable[[dict[str, Any], int], dict[str, Any]],
                 key: Callable[[Any], str]):
        self.answer = answer  # the chat completion the server gives a request body
        self.key = key  # "the same request" (canonical body)
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, ServedBatch] = {}
        self.plans: deque[BatchPlan] = deque()
        self.default_plan = BatchPlan()
        self.answered: Counter[str] = Counter()  # successful rows per distinct request body
        self.log: list[tuple[str, str]] = []  # (method, path) of every batch/file call
        self.lose_create_answers = 0  # creates that succeed but answer 500 (a lost answer)
        self._lock = threading.RLock()  # the final step adds files while holding it
        self._n = 0

    # -- routing ---------------------------------------------------------------------------
    def handles(self, path: str) -> bool:
        """Whether ``path`` is one of these endpoints."""
        p = path.split("?")[0]
        return "/v1/files" in p or "/v1/batches" in p

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes
               ) -> tuple[int, bytes, str]:
        """(status, payload, content type) for one request."""
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(path)
        segs = [s for s in parts.path.split("/") if s][1:]  # drop 'v1'
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self.log.append((method, parts.path))
        try:
            if segs[0] == "files":
                return self._files(method, segs[1:], headers, raw)
            return self._batches(method, segs[1:], query, raw)
        except KeyError as exc:
            return _json(404, {"error": {"message": f"no such object: {exc}", "type": "invalid_request_error"}})

    # -- files -----------------------------------------------------------------------------
    def _files(self, method: str, segs: list[str], headers: dict[str, str], raw: bytes
               ) -> tuple[int, bytes, str]:
        if method == "POST" and not segs:
            fields = _multipart(headers.get("content-type", ""), raw)
            name, data = fields["file"]
            return _json(200, self.add_file(data, name or "upload.jsonl", fields["purpose"][1].decode()))
        if method == "GET" and not segs:
            return _json(200, {"object": "list", "data": list(self.files.values()), "has_more": False})
        if method == "GET" and len(segs) == 2 and segs[1] == "content":
            return 200, self.contents[segs[0]], "application/octet-stream"
        if method == "GET" and len(segs) == 1:
            return _json(200, self.files[segs[0]])
        return _json(404, {"error": {"message": "not found"}})

    def add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Store a file; its file object."""
        with self._lock:
            self._n += 1
            fid = f"file-{self._n:06d}"
            obj = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                   "filename": filename, "purpose": purpose, "status": "processed"}
            self.files[fid] = obj
            self.contents[fid] = data
        return obj

    # -- batches ---------------------------------------------------------------------------
    def _batches(self, method: str, segs: list[str], query: dict[str, str], raw: bytes
                 ) -> tuple[int, bytes, str]:
        if method == "POST" and not segs:
            body = json.loads(raw)
            if body.get("input_file_id") not in self.files:
                return _json(400, {"error": {"message": "input file not found", "code": "invalid_file"}})
            b = self.create(body["input_file_id"], body.get("metadata") or {})
            with self._lock:
                lose = self.lose_create_answers > 0
                self.lose_create_answers -= lose
            if lose:
                return _json(500, {"error": {"message": "scripted lost answer", "type": "server_error"}})
            return _json(200, self.obj(b))
        if method == "GET" and not segs:
            return _json(200, self.listing(query))
        if method == "GET" and len(segs) == 1:
            return _json(200, self.obj(self.advance(self.batches[segs[0]])))
        if method == "POST" and len(segs) == 2 and segs[1] == "cancel":
            b = self.batches[segs[0]]
            with self._lock:
                if b.status not in ("completed", "expired", "failed", "cancelled"):
                    b.cancel, b.status = True, "cancelling"
            return _json(200, self.obj(b))
        return _json(404, {"error": {"message": "not found"}})

    def create(self, input_file_id: str, metadata: dict[str, Any]) -> ServedBatch:
        """A new batch in ``validating``, following the next plan."""
        lines = self.contents[input_file_id].count(b"\n")
        with self._lock:
            self._n += 1
            plan = self.plans.popleft() if self.plans else self.default_plan
            b = ServedBatch(f"batch_{self._n:06d}", input_file_id, metadata, plan,
                            int(time.time()) + self._n, total=lines)
            self.batches[b.id] = b
        return b

    def listing(self, query: dict[str, str]) -> dict[str, Any]:
        """The batches, newest first, from after ``after``, at most ``limit``."""
        with self._lock:
            order = sorted(self.batches.values(), key=lambda b: b.created_at, reverse=True)
        if "after" in query:
            ids = [b.id for b in order]
            order = order[ids.index(query["after"]) + 1:] if query["after"] in ids else []
        limit = int(query.get("limit", 20))
        page = order[:limit]
        return {"object": "list", "data": [self.obj(b) for b in page],
                "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                "has_more": len(order) > limit}

    def advance(self, b: ServedBatch) -> ServedBatch:
        """One step of the plan per retrieve; the final step runs the rows."""
        with self._lock:
            b.retrieves += 1
            if b.status in ("completed", "expired", "failed", "cancelled"):
                return b
            if b.cancel:
                self._run(b, "cancelled")
                return b
            b.step = min(b.step + 1, len(b.plan.states) - 1)
            state = b.plan.states[b.step]
            if state == "in_progress":
                b.completed = b.total // 2
            if state in ("completed", "expired", "failed", "cancelled"):
                self._run(b, state)
            else:
                b.status = state
        return b

    def _run(self, b: ServedBatch, final: str) -> None:
        """Answer the rows (as the plan says) and write the output and error files."""
        b.status = final
        if final == "failed":
            b.completed = 0
            return
        out: list[bytes] = []
        err: list[bytes] = []
        lines = self.contents[b.input_file_id].splitlines()
        row = b.plan.row or (lambda _c, _b, _k: "ok")
        b.completed = b.failed = 0
        for k, raw in enumerate(lines):
            req = json.loads(raw)
            cid, body = req["custom_id"], req["body"]
            what = "expired" if final == "cancelled" and k >= len(lines) // 2 else row(cid, body, k)
            if final == "cancelled" and what == "expired":
                what = "cancelled"
            if what == "skip":
                continue
            if what in ("ok", "duplicate", "empty"):
                data = self.answer(body, k)
                if what == "empty":
                    data["choices"][0]["message"]["content"] = ""
                line = _line(b.id, k, cid, 200, data)
                out.extend([line, line] if what == "duplicate" else [line])
                b.completed += 1
                if what != "empty":
                    self.answered[self.key(body)] += 1
            elif what in ("expired", "cancelled"):
                code = "batch_expired" if what == "expired" else "batch_cancelled"
                err.append(_dumps({"id": f"batch_req_{b.id}_{k}", "custom_id": cid,
                                   "response": None,
                                   "error": {"code": code, "message": f"scripted {code}"}}))
                b.failed += 1
            else:
                status = int(what.split(":")[1])
                if b.plan.vllm_errors:
                    err.append(_dumps({"id": f"vllm-{k}", "custom_id": cid,
                                       "response": {"status_code": status, "request_id": f"r{k}"},
                                       "error": f"scripted {status}"}))
                else:
                    err.append(_line(b.id, k, cid, status, {"error": {
                        "message": f"scripted {status}", "type": "server_error" if status >= 500
                        else "invalid_request_error"}}))
                b.failed += 1
        out.extend(_dumps(x) for x in b.plan.extra_lines)
        if b.plan.shuffle:
            random.Random(b.id).shuffle(out)
        if out:
            b.output_file_id = self.add_file(b"".join(out), f"{b.id}_output.jsonl",
                                             "batch_output")["id"]
        if err:
            b.error_file_id = self.add_file(b"".join(err), f"{b.id}_error.jsonl",
                                            "batch_output")["id"]

    def obj(self, b: ServedBatch) -> dict[str, Any]:
        """The batch object the OpenAI API returns."""
        errors = ({"object": "list", "data": b.plan.errors or [
            {"code": "invalid_request", "message": "scripted validation failure", "line": 1}]}
            if b.status == "failed" else None)
        return {"id": b.id, "object": "batch", "endpoint": "/v1/chat/completions",
                "errors": errors, "input_file_id": b.input_file_id, "completion_window": "24h",
                "status": b.status, "output_file_id": b.output_file_id,
                "error_file_id": b.error_file_id, "created_at": b.created_at,
                "expires_at": b.created_at + 86400,
                "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
                "metadata": b.metadata}

    # -- inspection ------------------------------------------------------------------------
    def creates(self) -> int:
        """How many batch creations the server received."""
        return sum(1 for m, p in self.log if m == "POST" and p.rstrip("/").endswith("/batches"))


def _line(batch_id: str, k: int, cid: str, status: int, body: Any) -> bytes:
    return _dumps({"id": f"batch_req_{batch_id}_{k}", "custom_id": cid,
                   "response": {"status_code": status, "request_id": f"req_{k}", "body": body},
                   "error": None})


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _json(status: int, obj: Any) -> tuple[int, bytes, str]:
    return status, json.dumps(obj).encode(), "application/json"


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, data)`` of a multipart/form-data body."""
    boundary = content_type.split("boundary=")[1].strip('"').encode()
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in raw.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.partition(b"\r\n\r\n")
        disposition = head.decode("utf-8", "replace")
        name = disposition.split('name="')[1].split('"')[0]
        filename = disposition.split('filename="')[1].split('"')[0] if 'filename="' in disposition else None
        out[name] = (filename, data[:-2] if data.endswith(b"\r\n") else data)
    return out
