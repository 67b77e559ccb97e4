"""The OpenAI-compatible backend against a real local HTTP server and the real openai client."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from openai_server import Behaviour, OpenAIServer  # noqa: E402

from generation.backends.base import ChatRequest  # noqa: E402
from generation.backends.openai_backend import (  # noqa: E402
    OpenAIBackend,
    OpenAIOptions,
    PriceTable,
    parse_spec,
    public_spec,
    redact,
    strip_credentials,
)
from generation.errors import GenerationError  # noqa: E402

pytestmark = pytest.mark.usefixtures("close_openai_backends")


def fast(**kw) -> OpenAIOptions:
    """Options with tiny backoffs so fault tests run in milliseconds."""
    base = dict(concurrency=1, timeout=2.0, backoff_base=0.01, backoff_max=0.05, max_attempts=4)
    base.update(kw)
    return OpenAIOptions(**base)


def backend(server: OpenAIServer, **kw) -> OpenAIBackend:
    return OpenAIBackend.from_spec(f"openai:test-model@{server.base_url}", fast(**kw))


def ask(text: str = "What is 6 * 7?", **params) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}], params)


# (behaviour, attempts made, final ok, error kinds of the attempts)
FAULTS = [
    (Behaviour.error(500), ["server", None], True),
    (Behaviour.error(502), ["server", None], True),
    (Behaviour.error(503), ["server", None], True),
    (Behaviour.error(408), ["timeout", None], True),
    (Behaviour.error(409), ["conflict", None], True),
    (Behaviour.rate_limited(retry_after_ms=20), ["rate_limit", None], True),
    (Behaviour("html"), ["malformed", None], True),
    (Behaviour("malformed"), ["malformed", None], True),
    (Behaviour("wrong_shape"), ["malformed", None], True),
    (Behaviour("no_finish_reason"), ["malformed", None], True),
    (Behaviour("close"), ["connection", None], True),
    (Behaviour.quota(), ["quota"], False),
    (Behaviour.error(400), ["client"], False),
    (Behaviour.error(401), ["auth"], False),
    (Behaviour.error(404), ["client"], False),
    (Behaviour("empty"), ["empty"], False),
]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize(("behaviour", "kinds", "ok"), FAULTS,
                         ids=[f"{b.kind}-{b.status}-{b.code}" for b, _, _ in FAULTS])
def test_exact_attempts_per_fault(server, behaviour, kinds, ok, transport):
    server.push(behaviour)
    [r] = backend(server, transport=transport).generate([ask()])
    assert r.ok is ok
    assert [a.error_kind for a in r.attempts] == kinds
    assert len(server.chat_requests()) == len(kinds)  # the server saw exactly these attempts
    assert [a.status for a in r.attempts] == ["retry"] * (len(kinds) - 1) + ["ok" if ok else "failed"]
    if ok:
        assert r.text and "42" in r.text and r.finish_reason == "stop"
    else:
        assert r.text is None and r.error_kind == kinds[-1]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_hang_past_the_timeout_is_a_timeout_then_retried(server, transport):
    server.push(Behaviour("hang", hang=5))
    [r] = backend(server, timeout=0.3, transport=transport).generate([ask()])
    assert r.ok and [a.error_kind for a in r.attempts] == ["timeout", None]
    assert 0.3 <= r.attempts[0].latency < 2.5  # cut at the timeout, not at the 5 s hang
    server.release()


def test_max_attempts_exhausted(server):
    server.push(*[Behaviour.error(503)] * 5)
    [r] = backend(server, max_attempts=3).generate([ask()])
    assert not r.ok and r.error_kind == "server"
    assert len(r.attempts) == 3 and len(server.chat_requests()) == 3


def test_retry_after_is_honoured_by_every_sender(server):
    server.latency = 0.01
    server.push(Behaviour.rate_limited(retry_after_ms=400))
    b = backend(server, concurrency=4)
    results = b.generate([ask(f"q{i}") for i in range(12)])
    assert all(r.ok for r in results)
    reqs = server.chat_requests()
    t429 = next(r.finished for r in reqs if r.status == 429)
    # Requests already on the wire when the client read the 429 arrive within a few ms;
    # after that nobody sends before Retry-After has passed (the pause is global).
    later = [r.started for r in reqs if r.started > t429 + 0.05]
    assert later and min(later) - t429 >= 0.38


def test_retry_after_seconds_header(server):
    server.push(Behaviour.rate_limited(retry_after=0.3))
    t = time.monotonic()
    [r] = backend(server).generate([ask()])
    assert r.ok and time.monotonic() - t >= 0.3


def test_in_flight_never_exceeds_concurrency(server):
    server.latency = 0.05
    results = backend(server, concurrency=5).generate([ask(f"q{i}") for i in range(40)])
    assert all(r.ok for r in results)
    assert server.max_in_flight == 5  # reached, never exceeded


def test_429_storm_slows_the_collector_down(server):
    server.latency = 0.02
    storm: list[float] = []  # the storm lasts 0.8 s from the first request

    def handler(body, n):
        if not storm:
            storm.append(time.monotonic() + 0.8)
        if time.monotonic() < storm[0]:
            return Behaviour.rate_limited(retry_after_ms=150)
        return None

    server.handler = handler
    b = backend(server, concurrency=16, max_attempts=20)
    results = b.generate([ask(f"q{i}") for i in range(48)])
    assert all(r.ok for r in results)
    in_storm = [r for r in server.chat_requests() if r.started < storm[0]]
    # Retrying at once would send 16 requests per 20 ms round trip: ~640 in the 0.8 s storm.
    # The global Retry-After pause and the halved concurrency keep it to a few waves.
    assert len(in_storm) <= 100, len(in_storm)
    assert b.stats.rate_limited >= 1 and b.stats.limit < 16


def test_permanent_errors_are_not_retried(server):
    server.push(Behaviour.quota(), Behaviour.error(400), Behaviour.error(403), Behaviour.error(422))
    results = backend(server).generate([ask(f"q{i}") for i in range(4)])
    assert [r.error_kind for r in results] == ["quota", "client", "auth", "client"]
    assert all(len(r.attempts) == 1 for r in results)
    assert len(server.chat_requests()) == 4


def test_usage_cost_and_latency(server, tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"test-model": {"input": 1.0, "output": 2.0}}}))
    server.latency = 0.05
    [r] = backend(server, prices=str(prices)).generate([ask()])
    assert r.ok and r.prompt_tokens and r.completion_tokens
    assert r.cost == pytest.approx((r.prompt_tokens * 1.0 + r.completion_tokens * 2.0) / 1e6)
    assert r.latency >= 0.05


def test_budget_stops_before_exceeding(server, tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"test-model": {"input": 1000.0, "output": 1000.0}}}))
    b = backend(server, prices=str(prices), budget=0.5, concurrency=2)
    reqs = [ask(f"q{i}", max_tokens=50) for i in range(40)]
    results = b.generate(reqs)
    sent = [r for r in results if r.attempts]
    unsent = [r for r in results if not r.attempts]
    assert sent and unsent and all(r.error_kind == "budget" for r in unsent)
    assert sum(r.cost or 0 for r in sent) <= 0.5
    assert len(server.chat_requests()) == len(sent)
    assert b.stop_reason == "budget"


def test_budget_needs_a_price():
    with pytest.raises(GenerationError, match="--prices"):
        OpenAIBackend.from_spec("openai:my-local-model@http://127.0.0.1:1/v1", fast(budget=1.0))


def test_key_is_sent_but_never_in_errors(server, monkeypatch):
    key = "sk-selfevo-test-SECRET-0123456789"
    monkeypatch.setenv("MY_KEY_VAR", key)
    server.push(Behaviour("status", 401, content=f"Incorrect API key provided: {key}"))
    b = backend(server, api_key_env="MY_KEY_VAR")
    [r] = b.generate([ask()])
    assert not r.ok and r.error_kind == "auth"
    assert key not in (r.error or "") and key not in repr(r)
    assert server.chat_requests()[0].headers.get("authorization") == f"Bearer {key}"
    assert key not in b.spec and key not in (b.endpoint or "")


def test_missing_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(GenerationError, match="NOPE_KEY"):
        OpenAIBackend.from_spec("openai:m@http://127.0.0.1:1/v1", fast(api_key_env="NOPE_KEY"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(GenerationError, match="OPENAI_API_KEY"):
        OpenAIBackend.from_spec("openai:gpt-4o-mini", fast())


def test_load_spreads_over_base_urls():
    with OpenAIServer(latency=0.02) as a, OpenAIServer(latency=0.02) as b:
        spec = f"openai:test-model@{a.base_url},{b.base_url}"
        be = OpenAIBackend.from_spec(spec, fast(concurrency=4))
        results = be.generate([ask(f"q{i}") for i in range(40)])
        assert all(r.ok for r in results)
        na, nb = len(a.chat_requests()), len(b.chat_requests())
        assert na + nb == 40 and na >= 10 and nb >= 10
        assert be.endpoint == ",".join(sorted([a.base_url, b.base_url]))


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_connection_refused_is_retried_then_failed(transport):
    be = OpenAIBackend.from_spec("openai:m@http://127.0.0.1:9/v1",
                                 fast(max_attempts=2, transport=transport))
    [r] = be.generate([ask()])
    assert not r.ok and [a.error_kind for a in r.attempts] == ["connection", "connection"]


def test_parse_spec_and_credentials():
    assert parse_spec("openai:gpt-4o-mini") == ("gpt-4o-mini", ["https://api.openai.com/v1"])
    assert parse_spec("openai:m@http://a:8000/v1,http://b:8000/v1") == (
        "m", ["http://a:8000/v1", "http://b:8000/v1"])
    assert parse_spec("openai:claude@2024@https://x/v1") == ("claude@2024", ["https://x/v1"])
    assert strip_credentials("https://user:sk-abc@host:8443/v1/?key=sk-zzz") == "https://host:8443/v1"
    with pytest.raises(GenerationError):
        parse_spec("openai:")
    with pytest.raises(GenerationError):
        parse_spec("openai:m@ftp://x")
    b = OpenAIBackend.from_spec("openai:m@http://u:pw-secret@127.0.0.1:1/v1", fast())
    assert "pw-secret" not in b.endpoint and "pw-secret" not in b.spec
    assert public_spec("openai:m@http://u:pw-secret@127.0.0.1:1/v1?key=k") == "openai:m@http://127.0.0.1:1/v1"
    assert public_spec("openai:gpt-4o") == "openai:gpt-4o" and public_spec("reference") == "reference"


def test_redact():
    assert "sk-" not in redact("bad key sk-proj-abcdef123456 given")
    assert redact("x MYSECRETVALUE y", ["MYSECRETVALUE"]) == "x [redacted] y"


def test_price_table_prefix_and_override(tmp_path):
    t = PriceTable.load()
    assert t.price("gpt-4o-mini-2024-07-18") == t.price("gpt-4o-mini")
    assert t.price("gpt-4o-2024-08-06") == t.price("gpt-4o") != t.price("gpt-4o-mini")
    assert t.price("llama-3-8b") is None
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"models": {"llama-3-8b": {"input": 0.1, "output": 0.2}}}))
    assert PriceTable.load(f).price("llama-3-8b") == (0.1, 0.2)
    f.write_text(json.dumps({"models": {"x": {"input": 1}}}))
    with pytest.raises(GenerationError, match="output"):
        PriceTable.load(f)


def test_rpm_spaces_requests(server):
    results = backend(server, concurrency=4, rpm=600).generate([ask(f"q{i}") for i in range(6)])
    assert all(r.ok for r in results)
    starts = sorted(r.started for r in server.chat_requests())
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # 600/min = one request per 0.1 s, whatever the concurrency (server-side arrival times
    # carry a few ms of connection jitter).
    assert min(gaps) >= 0.07 and starts[-1] - starts[0] >= 0.48


def test_tpm_limits_tokens_per_minute(server):
    # Each request reserves ~4 prompt + 100 completion tokens and the answers use all of
    # them (no refund). A 600 tokens/min bucket holds five; the sixth waits for ~24 tokens
    # at 10 tokens/s.
    server.handler = lambda body, n: Behaviour(content="x" * 400)  # ~101 completion tokens
    results = backend(server, concurrency=8, tpm=600).generate(
        [ask(f"r{i}", max_tokens=100) for i in range(6)])
    assert all(r.ok for r in results)
    starts = sorted(r.started for r in server.chat_requests())
    assert starts[4] - starts[0] < 1.0 and starts[5] - starts[4] >= 1.5
