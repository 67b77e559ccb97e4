"""A local OpenAI-compatible server for tests and benchmarks (stdlib only).

It listens on 127.0.0.1 (ephemeral port by default) and serves ``POST /v1/chat/completions``
and ``GET /v1/models``, and the Files and Batches endpoints (``server.batches``, a
:class:`openai_batches.BatchService`: scripted batch states and rows). Each request gets a
:class:`Behaviour`: taken from a scripted queue (one per request received, in arrival order), else from ``handler(body, n)``, else the
default — a deterministic answer derived from the messages after ``latency`` seconds. The
default answer ends with ``The answer is 42.`` and, when the request asks for a verdict, with
``Verdict: correct``, so feedback parses.

Faults it can play: latency, 429 with ``Retry-After`` / ``retry-after-ms``,
``insufficient_quota``, any status (500/502/503/401 …), a hang past the client's timeout,
an HTML 200, malformed JSON, wrong-shaped JSON, empty content, a missing finish_reason, a
200 page echoing the request's headers.

Every request is recorded (``server.requests``) with arrival/finish times and its outcome; the
server measures the most requests it had in flight at once (``max_in_flight``) and counts
successful answers per distinct request body (``successes``), so tests can assert "answered
exactly once".

Standalone (benchmarks)::

    python tests/openai_server.py --port 8765 --latency 0.1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import select
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from openai_batches import BatchService


@dataclass
class Behaviour:
    """What the server does with one request.

    ``kind``: ``ok`` (a normal completion), ``status`` (an error status with an OpenAI-style
    error body), ``hang`` (wait ``hang`` seconds or until :meth:`OpenAIServer.release`, then
    answer normally), ``html`` (a 200 with an HTML page), ``malformed`` (a 200 with broken
    JSON), ``wrong_shape`` (a 200 with JSON that is not a chat completion), ``empty`` (a
    completion whose content is ""), ``no_finish_reason`` (finish_reason null), ``close``
    (drop the connection without answering), ``echo_headers`` (a 200 text/plain page listing
    the request's headers, Authorization included, as a misconfigured gateway does).
    """

    kind: str = "ok"
    status: int = 200
    latency: float | None = None  # None: the server's default latency
    headers: dict[str, str] = field(default_factory=dict)
    code: str | None = None  # OpenAI error code, e.g. "insufficient_quota"
    content: str | None = None  # override the answer text (or the error message)
    hang: float = 30.0

    @classmethod
    def rate_limited(cls, retry_after: float | None = None, retry_after_ms: int | None = None) -> Behaviour:
        """A 429 with optional ``Retry-After`` (seconds) / ``retry-after-ms`` headers."""
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        return cls("status", 429, headers=headers, code="rate_limit_exceeded")

    @classmethod
    def quota(cls) -> Behaviour:
        """A 429 ``insufficient_quota`` (a permanent error: retrying will not help)."""
        return cls("status", 429, code="insufficient_quota")

    @classmethod
    def error(cls, status: int, code: str | None = None) -> Behaviour:
        """An error status with an OpenAI-style JSON body."""
        return cls("status", status, code=code)


@dataclass
class RequestLog:
    """One request the server received."""

    n: int
    path: str
    body: Any
    headers: dict[str, str]
    started: float
    finished: float | None = None
    behaviour: str = ""
    status: int | None = None
    success: bool = False


def request_key(body: Any) -> str:
    """A stable key for 'the same request' (its canonical JSON body)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def default_answer(body: dict[str, Any], n: int) -> str:
    """A deterministic answer derived from the messages (random-looking when temperature > 0)."""
    messages = body.get("messages") or []
    text = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    if (body.get("temperature") or 0) > 0:
        # Sampling: differ between calls so N samples are N distinct texts.
        digest += f"-{n}"
    answer = f"Working {digest}: 6 * 7 = 42. The answer is 42."
    if "verdict" in text.lower():
        answer = f"Step check {digest}: the computation 6 * 7 = 42 is right.\nVerdict: correct"
    return answer


def completion_data(body: dict[str, Any], n: int, text: str, finish: str | None = "stop",
                    model: str = "test-model") -> dict[str, Any]:
    """The chat completion object answering ``body`` with ``text`` (usage from the lengths)."""
    messages = body.get("messages") or []
    prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
    usage = {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": len(text) // 4 + 1}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0,
            "model": body.get("model", model),
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": text}}],
            "usage": usage}


class _HTTPServer(ThreadingHTTPServer):
    # socketserver's default backlog of 5 resets connections when 64 clients connect at once.
    request_queue_size = 512
    daemon_threads = True


class OpenAIServer:
    """A scripted OpenAI-compatible server running in a background thread."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        script: Iterable[Behaviour] = (),
        handler: Callable[[Any, int], Behaviour | None] | None = None,
        port: int = 0,
        model: str = "test-model",
        lora: bool = True,
        strict_models: bool = False,
    ) -> None:
        self.latency = latency
        self.script: deque[Behaviour] = deque(script)
        self.handler = handler
        self.model = model
        # vLLM's runtime LoRA API (POST /v1/load_lora_adapter): name -> adapter path. With
        # strict_models, chat requests for a model that is neither served nor loaded get 404.
        self.lora = lora
        self.strict_models = strict_models
        self.adapters: dict[str, str] = {}
        self.requests: list[RequestLog] = []
        self.successes: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.batches = BatchService(
            lambda body, n: completion_data(body, n, default_answer(body, n)), request_key)
        self._httpd = _HTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hung requests and shut down."""
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def release(self) -> None:
        """Let every hanging request finish now (and later ones not hang)."""
        self._release.set()

    def push(self, *behaviours: Behaviour) -> None:
        """Append behaviours to the script."""
        with self._lock:
            self.script.extend(behaviours)

    # -- inspection ----------------------------------------------------------------------
    def chat_requests(self) -> list[RequestLog]:
        """Requests to /chat/completions, in arrival order."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def reset_log(self) -> None:
        """Forget the recorded requests and counters (the script is kept)."""
        with self._lock:
            self.requests.clear()
            self.successes.clear()
            self.max_in_flight = 0

    # -- serving -------------------------------------------------------------------------
    def _next_behaviour(self, body: Any, n: int) -> Behaviour:
        with self._lock:
            if self.script:
                return self.script.popleft()
        if self.handler is not None:
            b = self.handler(body, n)
            if b is not None:
                return b
        return Behaviour()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
            # One write per response, no Nagle: otherwise headers and body go out as two
            # segments and delayed ACKs add ~40 ms to every request.
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _leave(self) -> None:
                # Leave the in-flight count before the answer goes out: the client may send
                # its next request the moment it reads this one, and the server must not
                # count the two as simultaneous.
                if getattr(self, "_counted", False):
                    self._counted = False
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status: int, payload: bytes, ctype: str,
                      headers: dict[str, str] | None = None) -> None:
                self._leave()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _client_gone(self) -> bool:
                # A closed peer makes the socket readable with zero bytes pending.
                r, _, _ = select.select([self.connection], [], [], 0)
                if not r:
                    return False
                try:
                    return self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

            def _batch_api(self, method: str, raw: bytes) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload, ctype = server.batches.handle(method, self.path, headers, raw)
                self._send(status, payload, ctype)

            def do_GET(self) -> None:
                if server.batches.handles(self.path):
                    self._batch_api("GET", b"")
                elif self.path.rstrip("/").endswith("/models"):
                    data = {"object": "list", "data": [
                        {"id": m, "object": "model", "owned_by": "selfevo-tests"}
                        for m in [server.model, *server.adapters]]}
                    self._send(200, json.dumps(data).encode(), "application/json")
                else:
                    self._send(404, b'{"error": {"message": "not found"}}', "application/json")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if server.batches.handles(self.path):
                    self._batch_api("POST", raw)
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with server._lock:
                    n = len(server.requests)
                    log = RequestLog(n, self.path, body, {k.lower(): v for k, v in self.headers.items()},
                                     time.monotonic())
                    server.requests.append(log)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                self._counted = True
                try:
                    self._answer(log, body, n)
                except (BrokenPipeError, ConnectionResetError):
                    log.behaviour += " (client gone)"
                    log.success = False
                finally:
                    self._leave()
                    log.finished = time.monotonic()

            def _load_adapter(self, log: RequestLog, body: Any) -> None:
                # What vLLM answers (plain text on success, an error object otherwise).
                name = (body or {}).get("lora_name")
                with server._lock:
                    loaded = name in server.adapters
                    if not loaded:
                        server.adapters[name] = body.get("lora_path")
                if loaded:
                    log.status = 400
                    err = {"error": {"message": f"The lora adapter '{name}' has already been "
                                                "loaded.", "type": "InvalidUserInput", "code": 400}}
                    self._send(400, json.dumps(err).encode(), "application/json")
                else:
                    log.status, log.success = 200, True
                    self._send(200, f"Success: LoRA adapter '{name}' added successfully.".encode(),
                               "text/plain")

            def _answer(self, log: RequestLog, body: Any, n: int) -> None:
                if server.lora and self.path.rstrip("/").endswith("/load_lora_adapter"):
                    self._load_adapter(log, body)
                    return
                model = (body or {}).get("model") if isinstance(body, dict) else None
                if server.strict_models and self.path.endswith("/chat/completions") and (
                        model != server.model and model not in server.adapters):
                    log.status = 404
                    err = {"error": {"message": f"The model `{model}` does not exist.",
                                     "type": "NotFoundError", "code": 404}}
                    self._send(404, json.dumps(err).encode(), "application/json")
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    log.status = 404
                    self._send(404, b'{"error": {"message": "not found"}}', "application/json")
                    return
                b = server._next_behaviour(body, n)
                log.behaviour = b.kind
                latency = server.latency if b.latency is None else b.latency
                if b.kind == "hang":
                    server._release.wait(b.hang)
                elif latency > 0:
                    time.sleep(latency)
                if self._client_gone():
                    # The client timed out or died: nothing is delivered, nothing counted.
                    log.behaviour += " (client gone)"
                    self.close_connection = True
                    return
                if b.kind == "close":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if b.kind == "status":
                    message = b.content if b.content is not None else f"scripted {b.status}"
                    err = {"error": {"message": message, "type": b.code or "error",
                                     "code": b.code, "param": None}}
                    log.status = b.status
                    self._send(b.status, json.dumps(err).encode(), "application/json", b.headers)
                    return
                if b.kind == "html":
                    log.status = 200
                    self._send(200, b"<html><body>Gateway says hi</body></html>", "text/html")
                    return
                if b.kind == "echo_headers":
                    log.status = 200
                    items = sorted(self.headers.items(),
                                   key=lambda kv: kv[0].lower() != "authorization")
                    page = "".join(f"{k}: {v}\n" for k, v in items)
                    self._send(200, page.encode(), "text/plain")
                    return
                if b.kind == "malformed":
                    log.status = 200
                    self._send(200, b'{"id": "x", "choices": [', "application/json")
                    return
                if b.kind == "wrong_shape":
                    log.status = 200
                    self._send(200, b'{"result": "not a chat completion"}', "application/json")
                    return
                text = b.content if b.content is not None else default_answer(body, n)
                finish: str | None = "stop"
                if b.kind == "empty":
                    text = ""
                elif b.kind == "no_finish_reason":
                    finish = None
                data = completion_data(body, n, text, finish, server.model)
                log.status = 200
                self._send(200, json.dumps(data).encode(), "application/json", b.headers)
                self.wfile.flush()
                if b.kind == "ok" or b.kind == "hang":
                    log.success = True
                    with server._lock:
                        server.successes[request_key(body)] += 1

        return Handler


def main() -> None:
    """Serve until interrupted (for benchmarks)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.1, help="seconds per answer")
    args = ap.parse_args()
    server = OpenAIServer(latency=args.latency, port=args.port)
    print(server.base_url, flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
