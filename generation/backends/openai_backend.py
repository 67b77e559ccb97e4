"""Any OpenAI-compatible endpoint: OpenAI, vLLM, SGLang, llama.cpp server, Ollama.

Spec: ``openai:MODEL[@BASE_URL[,BASE_URL…]]``. Several base URLs serving the same model
share the load (each request goes to the URL with the fewest requests in flight).

The official ``openai`` async client does the HTTP with its own retries off
(``max_retries=0``) and an explicit timeout; this module owns everything around it:

* **Retries.** 408/409/429/5xx, connection errors and timeouts are retried with exponential
  backoff and full jitter, honouring ``retry-after-ms`` / ``Retry-After`` (capped).
  ``insufficient_quota`` 429s and other 4xx are permanent. A 200 that is not a well-formed
  chat completion (HTML, malformed or wrong-shaped JSON, missing ``finish_reason``) is a
  ``malformed`` attempt (retried: proxies and overloaded servers produce them); empty content
  is an ``empty`` failure (not retried: it is the model's answer and a retry is paid again).
  Nothing malformed is ever returned as a success.
* **Pressure.** At most ``concurrency`` requests in flight; optional requests- and
  tokens-per-minute limits; a 429 halves the allowed concurrency (growing back by one per
  window of successes) and pauses every sender for the server's ``Retry-After``, so a 429
  storm slows the whole collector instead of being hammered by it.
* **Budget.** With ``budget`` (USD) set, each attempt reserves an upper bound of its cost
  (prompt bytes as tokens + ``max_tokens``) before it is sent; a request whose bound does not
  fit is not sent, so the spend never exceeds the budget.
* **Secrets.** The API key comes from the environment (``OPENAI_API_KEY`` or a named
  variable), is never part of the spec, endpoint, errors or logs; credentials in a base URL
  (``http://user:password@host/v1``) are sent as HTTP Basic auth in place of the key and
  stripped from everything stored. Both are registered with :mod:`corpus.redaction`, which
  the ledger, the runs table and the CLI apply to every error text.

* **Speed.** Requests run on the backend's own event-loop thread, kept across ``generate``
  calls (connections, pacing and the adaptive limit carry over); the client runs on its
  aiohttp transport when aiohttp is installed and posts the chat body with its generic
  ``post`` (no typed-dict transform) — both measured in docs/benchmarks.md ("Collect").

Each attempt becomes an :class:`AttemptInfo`; ``generate`` calls ``on_result`` as each request
finishes so the call ledger persists it at once. Call :meth:`OpenAIBackend.close` when done.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import os
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit, urlunsplit

from corpus.redaction import redact as redact_text
from corpus.redaction import register_secret
from generation.backends.base import (
    AttemptInfo,
    Backend,
    BeforeSend,
    ChatRequest,
    ChatResult,
    OnResult,
)
from generation.errors import GenerationError
from generation.prices import PriceTable

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
#: ``max_tokens`` assumed by the budget when a request sets none.
DEFAULT_BUDGET_MAX_TOKENS = 4096

class BudgetExceeded(GenerationError):
    """The next request could cost more than what is left of ``--budget``."""


@dataclass
class OpenAIOptions:
    """Options of the OpenAI-compatible backend (the ``selfevo collect`` flags)."""

    concurrency: int = 16  # most requests in flight at once (over all base URLs)
    rpm: float | None = None  # requests per minute, None = unlimited
    tpm: float | None = None  # tokens per minute (prompt estimate + max_tokens), None = unlimited
    timeout: float = 120.0  # seconds for one attempt, total
    max_attempts: int = 6  # attempts per request, first one included
    backoff_base: float = 0.5  # seconds; attempt k waits up to base * 2**(k-1) (full jitter)
    backoff_max: float = 30.0  # cap of the exponential backoff
    retry_after_max: float = 120.0  # cap of a server-provided Retry-After
    budget: float | None = None  # USD; stop before the spend could exceed it
    api_key_env: str = DEFAULT_KEY_ENV  # name of the environment variable holding the key
    prices: str | None = None  # a price-table file whose entries override generation/prices.json
    retry_malformed: bool = True  # retry a 200 that is not a chat completion
    # HTTP stack under the openai client: "aiohttp" (measured ~1.5x less CPU per request than
    # the default httpx2 pool at 64 in flight, see docs/benchmarks.md), "httpx" (the client's
    # default), or "auto" (aiohttp when installed).
    transport: str = "auto"
    # False when nothing will be sent (--mode file writes request files): no key is needed.
    require_key: bool = True

    def as_config(self) -> dict[str, Any]:
        """The options as stored in ``runs.config`` (names only: no secret is here)."""
        return asdict(self)


# -- spec, endpoint and secrets -----------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``openai:MODEL[@URL[,URL…]]`` → (model, base URLs). URLs are split at ``@http``.

    Each URL is checked (scheme, host, port) with a one-line error that never shows its
    credentials; a URL's password is registered as a secret (:mod:`corpus.redaction`).
    """
    if not spec.startswith("openai:"):
        raise GenerationError(f"not an openai spec: {redact_text(spec)!r}; expected "
                              "openai:MODEL[@BASE_URL]")
    rest = spec[len("openai:"):]
    m = re.search(r"@(?=https?://)", rest)
    model, urls = (rest[: m.start()], rest[m.end():]) if m else (rest, "")
    if not model:
        raise GenerationError(f"model name missing in {redact_text(spec)!r}; e.g. "
                              "openai:gpt-4o-mini")
    if "@" in model and not m:
        raise GenerationError(
            f"cannot read the base URL in {redact_text(spec)!r}: it must start with http:// or "
            "https://, e.g. openai:my-model@http://localhost:8000/v1"
        )
    base_urls = [u.strip() for u in urls.split(",") if u.strip()] or [DEFAULT_BASE_URL]
    for u in base_urls:
        check_base_url(u)
    return model, base_urls


_SECRET_QUERY = re.compile(r"key|token|sig|secret|pass|auth", re.IGNORECASE)


def check_base_url(url: str) -> None:
    """Refuse (GenerationError, one line, no credentials) a base URL that is not
    ``http(s)://HOST[:PORT][/PATH]``: a bad port, a broken IPv6 address, no host. Its
    password and key-like query values become registered secrets."""
    shown = redact_text(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise GenerationError(f"bad base URL {shown!r} in the spec: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(
            c.isspace() for c in url):
        raise GenerationError(f"bad base URL {shown!r} in the spec: expected "
                              "http(s)://HOST[:PORT][/PATH]")
    if parts.password:
        register_secret(parts.password)
        register_secret(unquote(parts.password), user=unquote(parts.username or ""))
    for name, value in parse_qsl(parts.query):
        if _SECRET_QUERY.search(name):
            register_secret(value)


def spec_identity(spec: str) -> tuple[str, str]:
    """(model spec, endpoint) that an ``openai:`` spec's calls are keyed by (no key needed)."""
    model, urls = parse_spec(spec)
    return f"openai:{model}", ",".join(sorted(strip_credentials(u) for u in urls))


def strip_credentials(url: str) -> str:
    """The URL without user:password@ and without a query string (keys hide in both)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, _host_port(parts), parts.path.rstrip("/"), "", ""))


def _host_port(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def transport_url(url: str) -> tuple[str, dict[str, str]]:
    """(URL to connect to, headers) for a base URL: credentials in the URL travel as an HTTP
    Basic ``Authorization`` header (instead of the API key's Bearer header), never in the URL
    (the aiohttp transport refuses URL credentials beside an Authorization header)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, {}
    plain = urlunsplit((parts.scheme, _host_port(parts), parts.path, parts.query, parts.fragment))
    user_pass = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return plain, {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


def public_spec(spec: str) -> str:
    """A model spec safe to store: base URLs without credentials or query strings."""
    if not spec.startswith("openai:"):
        return spec
    try:
        model, urls = parse_spec(spec)
    except GenerationError:
        return "openai:[unparseable spec]"
    if "@" not in spec[len("openai:") + len(model):]:
        return f"openai:{model}"
    return f"openai:{model}@{','.join(strip_credentials(u) for u in urls)}"


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without secrets (:func:`corpus.redaction.redact`, plus ``secrets``), on one
    line, shortened to 300 characters."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "[redacted]")
    text = " ".join(redact_text(text).split())
    return text[:300]


class Budget:
    """Spend so far plus reservations of requests in flight; never above ``limit``."""

    def __init__(self, limit: float | None, spent: float = 0.0):
        self.limit = limit
        self.spent = spent
        self.reserved = 0.0

    def try_reserve(self, amount: float) -> bool:
        """Reserve ``amount`` if spend + reservations + amount stays within the limit."""
        if self.limit is None:
            return True
        if self.spent + self.reserved + amount > self.limit + 1e-12:
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, actual: float) -> None:
        """Replace a reservation by the actual cost of the attempt."""
        if self.limit is not None:
            self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual


def upper_bound_tokens(request: ChatRequest) -> tuple[int, int]:
    """(prompt, completion) token bounds: UTF-8 bytes bound BPE tokens; + chat overhead."""
    prompt = sum(len(str(m.get("content", "")).encode("utf-8")) + 8 for m in request.messages) + 8
    completion = request.params.get("max_tokens") or request.params.get("max_completion_tokens")
    return prompt, int(completion or DEFAULT_BUDGET_MAX_TOKENS)


def estimate_tokens(request: ChatRequest) -> tuple[int, int]:
    """(prompt, completion) typical estimate: ~4 characters per token; + ``max_tokens``."""
    prompt = sum(len(str(m.get("content", ""))) for m in request.messages) // 4 + 4 * len(request.messages)
    completion = request.params.get("max_tokens") or request.params.get("max_completion_tokens")
    return prompt, int(completion or 256)


# -- pacing -------------------------------------------------------------------------------
class Pacer:
    """Requests- and tokens-per-minute limits (token bucket) and the 429 pause."""

    def __init__(self, rpm: float | None, tpm: float | None):
        self.rpm = rpm
        self.tpm = tpm
        self._next_request = 0.0
        self._tokens = float(tpm) if tpm else 0.0
        self._tokens_at = time.monotonic()
        self.paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Hold every sender for ``seconds`` (a server asked us to back off)."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def wait(self, tokens: int) -> None:
        """Wait until the pause is over and the rpm/tpm limits allow one more request."""
        while True:
            now = time.monotonic()
            delay = self.paused_until - now
            if self.rpm:
                delay = max(delay, self._next_request - now)
            if self.tpm:
                self._tokens = min(
                    float(self.tpm), self._tokens + (now - self._tokens_at) * self.tpm / 60
                )
                self._tokens_at = now
                need = min(tokens, self.tpm)  # a request larger than the bucket waits for a full one
                if self._tokens < need:
                    delay = max(delay, (need - self._tokens) * 60 / self.tpm)
            if delay <= 0:
                break
            # Re-check often: answers refund unused tokens, and a pause may be extended.
            await asyncio.sleep(min(delay, 0.1))
        if self.rpm:
            self._next_request = max(self._next_request, time.monotonic()) + 60 / self.rpm
        if self.tpm:
            self._tokens -= min(tokens, self.tpm)

    def refund(self, tokens: int) -> None:
        """Give back tokens reserved but not used (the answer was shorter than max_tokens)."""
        if self.tpm and tokens > 0:
            self._tokens = min(float(self.tpm), self._tokens + tokens)


class Gate:
    """Adaptive concurrency: at most ``limit`` in flight; halved on 429, +1 per ``limit`` oks."""

    def __init__(self, limit: int):
        self.max = limit
        self.limit = float(limit)
        self.in_flight = 0
        self._cond = asyncio.Condition()
        self._last_cut = 0.0

    async def __aenter__(self) -> Gate:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < max(1, int(self.limit)))
            self.in_flight += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def on_rate_limit(self) -> None:
        # One cut per second: a burst of 429s from one overload is one signal, not ten.
        now = time.monotonic()
        if now - self._last_cut > 1.0:
            self.limit = max(1.0, self.limit / 2)
            self._last_cut = now

    def on_success(self) -> None:
        self.limit = min(float(self.max), self.limit + 1.0 / max(1.0, self.limit))


# -- errors -------------------------------------------------------------------------------
@dataclass
class Failure(Exception):
    """Why one attempt (an HTTP answer, or a batch output line) is not a usable completion."""

    kind: str  # rate_limit | quota | server | timeout | connection | conflict | auth | client | malformed | empty
    message: str
    retryable: bool
    http_status: int | None = None
    retry_after: float | None = None


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra:
        try:
            return max(0.0, float(ra))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(ra)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    return None


def classify_status(status: int, body: Any, headers: Any, message: str) -> Failure:
    """The failure an error status means: its kind, and whether a retry may succeed."""
    code = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            code = err.get("code") or err.get("type")
    ra = retry_after_seconds(headers)
    if status == 429 and code == "insufficient_quota":
        return Failure("quota", f"429 insufficient_quota: {message}", False, status)
    if status == 429:
        return Failure("rate_limit", f"429 rate limited: {message}", True, status, ra)
    if status == 408:
        return Failure("timeout", f"408 request timeout: {message}", True, status, ra)
    if status == 409:
        return Failure("conflict", f"409 conflict: {message}", True, status, ra)
    if status >= 500:
        return Failure("server", f"{status} server error: {message}", True, status, ra)
    if status in (401, 403):
        return Failure("auth", f"{status} not authorised (check the API key variable): {message}", False, status)
    return Failure("client", f"{status} client error: {message}", False, status)


def parse_completion(status: int, content_type: str, body: bytes) -> tuple[str, str, dict[str, Any]]:
    """(text, finish_reason, usage) of a 200 response, or raise a malformed/empty failure."""
    head = body[:200].decode("utf-8", "replace")
    if "json" not in content_type.lower() or head.lstrip().startswith("<"):
        raise Failure("malformed", f"200 with a {content_type or 'untyped'} body, not a chat "
                      f"completion: {head[:80]!r}", True, status)
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise Failure("malformed", f"200 with malformed JSON ({exc})", True, status) from None
    return completion_fields(data, status, head)


def completion_fields(data: Any, status: int = 200, head: str | None = None
                      ) -> tuple[str, str, dict[str, Any]]:
    """(text, finish_reason, usage) of a decoded chat completion, or raise malformed/empty.

    The checks every answer passes, online or from a batch output line.
    """
    try:
        choice = data["choices"][0]
        message = choice["message"]
        text = message.get("content")
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        head = head if head is not None else json.dumps(data)[:200]
        raise Failure("malformed", f"200 with JSON that is not a chat completion: {head[:80]!r}",
                      True, status) from None
    if text is not None and not isinstance(text, str):
        raise Failure("malformed", "200 with non-text message content", True, status)
    if not finish or not isinstance(finish, str):
        raise Failure("malformed", "200 without a finish_reason", True, status)
    if not text or not text.strip():
        raise Failure("empty", f"200 with empty content (finish_reason={finish})", False, status)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return text, finish, usage


# -- the backend --------------------------------------------------------------------------
@dataclass
class BackendStats:
    """Live counters for progress display (read from another thread; approximate)."""

    sent: int = 0
    retries: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    limit: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)


class OpenAIBackend(Backend):
    """Chat completions from one model behind one or more OpenAI-compatible base URLs."""

    #: ``before_send(i)`` is called right before request ``i``'s first attempt.
    announces_sends = True
    batchable = True

    def __init__(self, model: str, base_urls: Sequence[str] | None = None,
                 options: OpenAIOptions | None = None):
        self.model = model
        self.base_urls = list(base_urls or [DEFAULT_BASE_URL])
        self.options = options or OpenAIOptions()
        if self.options.concurrency < 1:
            raise GenerationError("--concurrency must be at least 1")
        if self.options.max_attempts < 1:
            raise GenerationError("--max-attempts must be at least 1")
        clean = [strip_credentials(u) for u in self.base_urls]
        # Identity of the endpoint (part of call_id): the sorted set of base URLs, so the
        # order of URLs in a spec does not change the cache.
        self.endpoint = ",".join(sorted(clean))
        self.spec = f"openai:{model}"
        self.prices = PriceTable.load(self.options.prices)
        if self.options.budget is not None and self.prices.price(model) is None:
            raise GenerationError(
                f"--budget needs a price for model {model!r}: it is not in generation/prices.json; "
                "pass --prices FILE with {\"models\": {\"" + model + "\": {\"input\": USD_PER_1M, "
                "\"output\": USD_PER_1M}}}"
            )
        self.options.transport = resolve_transport(self.options.transport)
        self.budget = Budget(self.options.budget)
        self.stats = BackendStats(limit=self.options.concurrency)
        self._api_key = self._read_key()
        self._stop = threading.Event()
        self.stop_reason: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients: list[Any] = []

    @classmethod
    def from_spec(cls, spec: str, options: OpenAIOptions | None = None) -> OpenAIBackend:
        """Build from ``openai:MODEL[@BASE_URL[,…]]``."""
        model, urls = parse_spec(spec)
        return cls(model, urls, options)

    def _read_key(self) -> str:
        name = self.options.api_key_env
        key = os.environ.get(name)
        if key:
            register_secret(key)  # removed from everything stored or printed from now on
            return key
        if not self.options.require_key:
            return "not-needed"
        if name != DEFAULT_KEY_ENV:
            raise GenerationError(f"environment variable {name} (from --api-key-env) is not set")
        if any(strip_credentials(u) == DEFAULT_BASE_URL for u in self.base_urls):
            raise GenerationError(
                f"set {DEFAULT_KEY_ENV} (or pass --api-key-env NAME) to call {DEFAULT_BASE_URL}"
            )
        # Local servers (vLLM, llama.cpp, Ollama) accept any key; the client requires one.
        return "not-needed"

    def sync_client(self, timeout: float | None = None) -> Any:
        """A blocking ``openai.OpenAI`` client on the first base URL, retries off.

        For the Batch API's few control calls (files, batches): their retries are the
        caller's, since blindly retrying a batch creation could submit it twice.
        """
        import openai

        url, headers = transport_url(self.base_urls[0])
        return openai.OpenAI(api_key=self._api_key, base_url=url, max_retries=0,
                             default_headers=headers, timeout=timeout or self.options.timeout)

    def request_stop(self, reason: str = "interrupted") -> None:
        """Send nothing new; requests in flight finish (thread-safe)."""
        self.stop_reason = self.stop_reason or reason
        self._stop.set()

    @property
    def concurrency(self) -> int:
        """``--concurrency``: requests in flight at most, over all base URLs."""
        return self.options.concurrency

    def cost_bound(self, request: ChatRequest) -> float:
        """The most one attempt of ``request`` can cost (0 when the model has no price)."""
        p = self.prices.price(self.model)
        if p is None:
            return 0.0
        pt, ct = upper_bound_tokens(request)
        return (p[0] * pt + p[1] * ct) / 1e6

    # -- generate --------------------------------------------------------------------------
    def generate(self, requests: Sequence[ChatRequest], on_result: OnResult | None = None,
                 before_send: BeforeSend | None = None) -> list[ChatResult]:
        """Answer every request (see the module docstring); ``on_result`` as each finishes.

        Requests run on the backend's own event loop thread, which keeps its HTTP connections,
        pacing and adaptive concurrency from one call to the next; ``on_result`` and
        ``before_send`` are called from that thread. Requests not sent because of the budget
        or a stop come back with ``ok=False``, no attempts and ``error_kind`` ``budget`` /
        ``interrupted``. On Ctrl-C nothing new is sent, requests in flight finish and are
        reported, then KeyboardInterrupt is raised; a second Ctrl-C abandons them.
        """
        if not requests:
            return []
        loop = self._event_loop()
        fut = asyncio.run_coroutine_threadsafe(
            self._generate(list(requests), on_result, before_send), loop)
        try:
            return fut.result()
        except KeyboardInterrupt:
            self.request_stop("interrupted")
            loop.call_soon_threadsafe(self._interrupted.set)
            try:
                fut.result()  # in-flight requests finish and are reported
            except KeyboardInterrupt:  # a second Ctrl-C: abandon them (they stay pending)
                fut.cancel()
            raise

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self._thread = threading.Thread(target=serve, name="selfevo-openai", daemon=True)
            self._thread.start()
            ready.wait()
            self._loop = loop
            asyncio.run_coroutine_threadsafe(self._setup(), loop).result()
        return self._loop

    async def _setup(self) -> None:
        import httpx2
        import openai

        opts = self.options
        limits = httpx2.Limits(max_connections=opts.concurrency + 4,
                               max_keepalive_connections=opts.concurrency + 4)
        http = (openai.DefaultAioHttpClient if opts.transport == "aiohttp"
                else openai.DefaultAsyncHttpx2Client)
        self._clients = []
        for base_url in self.base_urls:
            url, headers = transport_url(base_url)
            self._clients.append(openai.AsyncOpenAI(
                api_key=self._api_key, base_url=url, max_retries=0, timeout=opts.timeout,
                default_headers=headers, http_client=http(limits=limits, timeout=opts.timeout),
            ))
        self._loads = [0] * len(self._clients)
        self._gate = Gate(opts.concurrency)
        self._pacer = Pacer(opts.rpm, opts.tpm)
        self._interrupted = asyncio.Event()

    def close(self) -> None:
        """Close the HTTP clients and stop the event loop thread."""
        loop, self._loop = self._loop, None
        if loop is None:
            return

        async def shutdown() -> None:
            for c in self._clients:
                with contextlib.suppress(Exception):
                    await c.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()

    async def _generate(self, requests: list[ChatRequest], on_result: OnResult | None,
                        before_send: BeforeSend | None) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        next_index = 0

        def finish(i: int, result: ChatResult) -> None:
            results[i] = result
            if on_result is not None:
                on_result(i, result)

        async def worker() -> None:
            nonlocal next_index
            while not self._stop.is_set() and next_index < len(requests):
                i = next_index
                next_index += 1
                finish(i, await self._complete(i, requests[i], self._clients, self._loads,
                                               self._gate, self._pacer, before_send))
            # Stopped (budget or Ctrl-C): report what was never taken, so the ledger can
            # drop its pending rows. Requests abandoned in flight are not reported: they
            # stay pending, and the next run counts them as possibly billed.
            while next_index < len(requests):
                i = next_index
                next_index += 1
                reason = self.stop_reason or "interrupted"
                finish(i, ChatResult(ok=False, error_kind=reason, error=f"not sent ({reason})"))

        n_workers = min(self.options.concurrency, len(requests))
        done = await asyncio.gather(*(worker() for _ in range(n_workers)), return_exceptions=True)
        errors = [d for d in done if isinstance(d, BaseException)]
        if errors:
            raise errors[0]
        # (KeyboardInterrupt is raised by generate() in the caller's thread: raised here it
        # would escape the event loop thread.)
        return [r for r in results if r is not None]

    async def _complete(self, index: int, request: ChatRequest, clients: list[Any],
                        loads: list[int], gate: Gate, pacer: Pacer,
                        before_send: BeforeSend | None) -> ChatResult:
        opts = self.options
        attempts: list[AttemptInfo] = []
        est_prompt, est_completion = estimate_tokens(request)
        bound = self.cost_bound(request)
        params = dict(request.params)
        last: Failure | None = None
        for attempt in range(1, opts.max_attempts + 1):
            if attempt > 1 and self.stop_reason == "interrupted":
                break  # Ctrl-C: finish what is in flight, start no retries
            await pacer.wait(est_prompt + est_completion)
            if not self.budget.try_reserve(bound):
                self.request_stop("budget")
                return ChatResult(ok=False, error_kind="budget", attempts=attempts,
                                  error=f"not sent: it could cost up to ${bound:.6f} and the "
                                  f"budget ${opts.budget} has ${self._left():.6f} left")
            if attempt == 1 and before_send is not None:
                wait = before_send(index)
                if wait is not None:  # its pending row is not committed yet
                    await asyncio.to_thread(wait)
            async with gate:
                k = min(range(len(clients)), key=loads.__getitem__)
                loads[k] += 1
                self.stats.sent += 1
                t0 = time.perf_counter()
                try:
                    text, finish, usage = await self._attempt(clients[k], request.messages, params)
                except Failure as f:
                    last = f
                finally:
                    loads[k] -= 1
                latency = time.perf_counter() - t0
            if last is None:
                pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
                cost = self.prices.cost(self.model, pt, ct)
                self.budget.settle(bound, cost or 0.0)
                pacer.refund(est_completion - (ct or est_completion))
                gate.on_success()
                self._count(pt, ct, cost)
                attempts.append(AttemptInfo(attempt, "ok", latency, 200))
                return ChatResult(ok=True, text=text, finish_reason=finish, prompt_tokens=pt,
                                  completion_tokens=ct, latency=latency, cost=cost,
                                  attempts=attempts)
            # A failed attempt is assumed unbilled (the provider returned no completion).
            self.budget.settle(bound, 0.0)
            self.stats.by_kind[last.kind] = self.stats.by_kind.get(last.kind, 0) + 1
            retry = (last.retryable and (last.kind != "malformed" or opts.retry_malformed)
                     and attempt < opts.max_attempts)
            attempts.append(AttemptInfo(attempt, "retry" if retry else "failed", latency,
                                        last.http_status, last.kind, last.message))
            if not retry:
                break
            self.stats.retries += 1
            delay = random.uniform(0, min(opts.backoff_max, opts.backoff_base * 2 ** (attempt - 1)))
            if last.retry_after is not None:
                delay = min(last.retry_after, opts.retry_after_max) + random.uniform(0, 0.1)
            if last.kind == "rate_limit":
                self.stats.rate_limited += 1
                gate.on_rate_limit()
                self.stats.limit = gate.limit
                pacer.pause(delay)  # everyone waits, not just this request
            await self._sleep(delay)
            last = None
        assert attempts, "a request ends with at least one attempt or a budget stop"
        final = attempts[-1]
        return ChatResult(ok=False, error_kind=final.error_kind, error=final.error,
                          latency=final.latency, attempts=attempts)

    async def _sleep(self, seconds: float) -> None:
        # A Ctrl-C cuts the backoff short.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._interrupted.wait(), seconds)

    def _left(self) -> float:
        b = self.budget
        return max(0.0, (b.limit or 0.0) - b.spent - b.reserved)

    def _count(self, pt: int | None, ct: int | None, cost: float | None) -> None:
        s = self.stats
        s.prompt_tokens += pt or 0
        s.completion_tokens += ct or 0
        s.cost += cost or 0.0

    async def _attempt(self, client: Any, messages: list[dict[str, str]],
                       params: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        import httpx2
        import openai

        try:
            async with asyncio.timeout(self.options.timeout + 1.0):
                # The client's generic POST (its documented way to call any endpoint) rather
                # than chat.completions.create: create() re-walks the messages through the
                # typed-dict transform, ~1 ms of CPU per request for JSON that is already
                # plain, and parses into pydantic models we would only unpack again.
                # Auth, headers, timeouts and status errors are the client's as usual.
                http = await client.post("/chat/completions", cast_to=httpx2.Response,
                                         body={"model": self.model, "messages": messages, **params})
                body = await http.aread()
        except TimeoutError:
            raise Failure("timeout", f"no answer within {self.options.timeout:g}s", True) from None
        except openai.APIConnectionError as exc:
            # The aiohttp transport reports refused or dropped connections as timeouts:
            # look at the root cause to tell them apart.
            root = _root_cause(exc)
            timed_out = isinstance(exc, openai.APITimeoutError) and not _is_connection_error(root)
            if timed_out or isinstance(root, TimeoutError):
                raise Failure("timeout", f"no answer within {self.options.timeout:g}s", True) from None
            raise Failure("connection", self._clean(f"connection error: {root!r}"), True) from None
        except openai.APIStatusError as exc:
            f = classify_status(exc.status_code, exc.body, exc.response.headers, self._clean(str(exc.message)))
            raise f from None
        return parse_completion(http.status_code, http.headers.get("content-type", ""), body)

    def _clean(self, text: str) -> str:
        return redact(text, [self._api_key])


def resolve_transport(name: str) -> str:
    """``auto`` → ``aiohttp`` when it is installed, else ``httpx``; checks the name."""
    import importlib.util

    if name == "auto":
        return "aiohttp" if importlib.util.find_spec("aiohttp") else "httpx"
    if name not in ("aiohttp", "httpx"):
        raise GenerationError(f"unknown transport {name!r}: use auto, aiohttp or httpx")
    if name == "aiohttp" and not importlib.util.find_spec("aiohttp"):
        raise GenerationError("transport aiohttp needs the aiohttp package: pip install aiohttp")
    return name


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def _is_connection_error(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:
        return isinstance(exc, ConnectionError)
    if isinstance(exc, aiohttp.ServerTimeoutError | aiohttp.SocketTimeoutError):
        return False
    return isinstance(exc, aiohttp.ClientConnectionError | ConnectionError)


__all__ = [
    "BudgetExceeded", "OpenAIBackend", "OpenAIOptions", "PriceTable", "parse_spec",
    "redact", "strip_credentials",
]
