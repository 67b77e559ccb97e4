"""Result lines of a batch, from any engine, as the ledger's :class:`ChatResult`.

Accepted shapes (one JSON object per line):

* **OpenAI Batch API output / error files, ``vllm run-batch``, SGLang** —
  ``{"custom_id", "response": {"status_code", "body"}, "error"}``. A 200 whose ``body`` is a
  chat completion passes the online path's checks (:func:`completion_fields`: malformed and
  empty answers are failures, never successes); another status is classified as an online
  HTTP error would be (429/5xx retryable, other 4xx permanent), its message from
  ``body.error`` (OpenAI) or the top-level ``error`` string (vLLM).
* **A row-level error** — ``{"custom_id", "response": null, "error": {"code", "message"}}``,
  e.g. ``batch_expired`` (re-submitted) or ``batch_cancelled`` (not).
* **A flat row** (Ray Data LLM and other pipelines) — ``{"custom_id", "generated_text"}``
  with optional ``finish_reason`` (default ``stop``) and token counts
  (``num_input_tokens`` / ``num_generated_tokens`` or ``prompt_tokens`` /
  ``completion_tokens``).

Anything else (not JSON, no ``custom_id``) is *unreadable*: counted and reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from corpus.redaction import redact
from generation.backends.base import AttemptInfo, ChatResult
from generation.backends.openai_backend import Failure, classify_status, completion_fields

#: Row error codes that a new batch may fix (others are permanent).
RETRYABLE_CODES = {"batch_expired", "batch_failed", "missing", "server_error", "rate_limit_exceeded",
                   "timeout"}


@dataclass
class LineResult:
    """One result line: whose answer (``custom_id``), the answer, and whether to re-submit."""

    custom_id: str | None
    result: ChatResult | None  # None: unreadable line
    retryable: bool = False
    problem: str | None = None  # why the line is unreadable


def read_line(raw: bytes | str, attempt: int = 1) -> LineResult:
    """Decode one result line (see the module docstring); ``attempt`` numbers its attempt row."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        return LineResult(None, None, problem=f"not JSON ({exc})")
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        return LineResult(None, None, problem="no custom_id")
    cid = obj["custom_id"]
    response = obj.get("response")
    if isinstance(response, dict):
        return _response(cid, response, obj.get("error"), attempt)
    if isinstance(obj.get("generated_text"), str):
        return _flat(cid, obj, attempt)
    err = obj.get("error")
    code = err.get("code") if isinstance(err, dict) else None
    message = (err.get("message") if isinstance(err, dict) else err) or "no response"
    kind = code or "batch_error"
    return LineResult(cid, _failed(kind, str(message), None, attempt, kind in RETRYABLE_CODES),
                      kind in RETRYABLE_CODES)


def _response(cid: str, response: dict[str, Any], error: Any, attempt: int) -> LineResult:
    status = response.get("status_code") or 200
    body = response.get("body")
    if status == 200 and body is not None:
        try:
            text, finish, usage = completion_fields(body, 200)
        except Failure as f:
            return LineResult(cid, _failed(f.kind, f.message, 200, attempt, f.retryable),
                              f.retryable)
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return LineResult(cid, ChatResult(
            ok=True, text=text, finish_reason=finish, prompt_tokens=pt, completion_tokens=ct,
            latency=None, attempts=[AttemptInfo(attempt, "ok", None, 200)]))
    message = _message(body, error) or f"status {status}"
    f = classify_status(int(status), body, None, message)
    return LineResult(cid, _failed(f.kind, f.message, f.http_status, attempt, f.retryable),
                      f.retryable)


def _flat(cid: str, obj: dict[str, Any], attempt: int) -> LineResult:
    text = obj["generated_text"]
    if not text.strip():
        return LineResult(cid, _failed("empty", "empty generated_text", None, attempt, False))
    pt = obj.get("num_input_tokens", obj.get("prompt_tokens"))
    ct = obj.get("num_generated_tokens", obj.get("completion_tokens"))
    return LineResult(cid, ChatResult(
        ok=True, text=text, finish_reason=str(obj.get("finish_reason") or "stop"),
        prompt_tokens=pt if isinstance(pt, int) else None,
        completion_tokens=ct if isinstance(ct, int) else None, latency=None,
        attempts=[AttemptInfo(attempt, "ok", None, None)]))


def _message(body: Any, error: Any) -> str | None:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error) if error else None


def _failed(kind: str, message: str, http_status: int | None, attempt: int,
            retryable: bool) -> ChatResult:
    status = "retry" if retryable else "failed"
    message = redact(message)  # provider text may echo anything key-shaped
    return ChatResult(ok=False, error_kind=kind, error=message, latency=None,
                      attempts=[AttemptInfo(attempt, status, None, http_status, kind, message)])
