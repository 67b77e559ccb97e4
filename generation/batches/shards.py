"""Batch JSONL shards: one request per line, ``custom_id`` = the call id.

A line is what the OpenAI Batch API (and ``vllm run-batch``, SGLang …) reads::

    {"custom_id": "h1:…", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [...], "temperature": 0.0, ...}}

``body`` is exactly the online request's body, so a batch answer is the answer to the call
the ledger keys by ``call_id``. Shards are cut greedily at ``max_requests`` lines or
``max_bytes`` bytes (:class:`Splitter`; the dry run counts shards with the same class), and
written streaming: a temporary file renamed to ``<key>.jsonl`` once complete, ``key`` being
the hash of the shard's calls (:func:`shard_key`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generation.errors import GenerationError

BATCH_URL = "/v1/chat/completions"


def request_line(call_id: str, model: str, messages: list[dict[str, Any]],
                 params: dict[str, Any]) -> bytes:
    """One Batch JSONL line (with its newline): the online request's body under ``custom_id``."""
    line = {"custom_id": call_id, "method": "POST", "url": BATCH_URL,
            "body": {"model": model, "messages": messages, **params}}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def shard_key(model: str, endpoint: str | None, digest: str, attempt: int, salt: str | None
              ) -> str:
    """``b`` + 20 hex digits naming a shard: its model, endpoint, calls, attempt and ``salt``.

    ``salt`` is the batch a re-submission continues (the same leftovers give the same key, so
    a re-submission written twice is one batch), or the run that wrote a first submission
    (so calls failed in an old batch go into a new one, never into the settled one).
    """
    text = json.dumps([model, endpoint, digest, attempt, salt], separators=(",", ":"))
    return "b" + hashlib.sha256(text.encode()).hexdigest()[:20]


class Splitter:
    """Where shards end: at most ``max_requests`` lines and ``max_bytes`` bytes each."""

    def __init__(self, max_requests: int, max_bytes: int):
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.n = 0
        self.bytes = 0
        self.shards = 0

    def add(self, nbytes: int) -> bool:
        """Count a line of ``nbytes``; True when it starts a new shard."""
        if nbytes > self.max_bytes:
            raise GenerationError(
                f"one request is {nbytes:,} bytes, more than a shard may hold "
                f"({self.max_bytes:,}); raise --shard-mb")
        new = self.n == 0 or self.n >= self.max_requests or self.bytes + nbytes > self.max_bytes
        if new:
            self.shards += 1
            self.n = self.bytes = 0
        self.n += 1
        self.bytes += nbytes
        return new


@dataclass
class Shard:
    """A shard file written to disk: its key, path, size and the positions of its requests."""

    key: str
    path: Path
    index: int
    n: int
    bytes: int
    first: str = ""  # smallest and largest call id (resubmitted shards are written in order)
    last: str = ""
    positions: list[int] = field(default_factory=list)  # caller's index of each line
    call_ids: list[str] = field(default_factory=list)


def write_shards(directory: Path, lines: Iterable[tuple[int, str, bytes]], *, model: str,
                 endpoint: str | None, max_requests: int, max_bytes: int, attempt: int = 1,
                 salt: str | None = None, keep_ids: bool = True) -> Iterator[Shard]:
    """Write ``(position, call_id, line)`` items as shard files; yield each when complete.

    The caller registers a yielded shard before asking for the next one, so a crash leaves
    at most the shard being written unregistered (its calls go into a shard next time).
    ``keep_ids=False`` keeps only each shard's first and last call id, not every one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    splitter = Splitter(max_requests, max_bytes)
    out: Any = None
    tmp: Path | None = None
    shard: Shard | None = None
    digest = hashlib.sha256()

    def close() -> Shard:
        assert out is not None and tmp is not None and shard is not None
        out.close()
        shard.key = shard_key(model, endpoint, digest.hexdigest(), attempt, salt)
        shard.path = directory / f"{shard.key}.jsonl"
        os.replace(tmp, shard.path)
        return shard

    for position, call_id, line in lines:
        if splitter.add(len(line)):
            if shard is not None:
                yield close()
            tmp = directory / f".{os.getpid()}-{splitter.shards}.jsonl.tmp"
            out = open(tmp, "wb")  # noqa: SIM115 - closed by close()
            shard = Shard("", tmp, splitter.shards - 1, 0, 0)
            digest = hashlib.sha256()
        assert shard is not None
        out.write(line)
        digest.update(call_id.encode() + b"\n")
        shard.n += 1
        shard.bytes += len(line)
        shard.first = min(shard.first, call_id) if shard.first else call_id
        shard.last = max(shard.last, call_id)
        if keep_ids:
            shard.positions.append(position)
            shard.call_ids.append(call_id)
    if shard is not None:
        yield close()
