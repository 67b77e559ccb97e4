"""Secrets never reach the store or the terminal (issue 12, defects 4 and 5).

One redaction (corpus.redaction) is applied where text is written (the ledger, runs) and
printed (the CLI's error line and tracebacks); credentials in a base URL are sent as HTTP
Basic auth and stored nowhere. The store's files are searched byte by byte.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import file_store, writing
from openai_server import Behaviour, OpenAIServer  # noqa: E402
from test_collect import collect_args, query, seed  # noqa: E402

from corpus.redaction import redact, register_secret  # noqa: E402

KEY = "sk-sqlsafe-echo-SECRET-5a4b3c2d1e0f"
PASSWORD = "pw-Sekr3t-in-the-URL"


def assert_nowhere(db: str, *secrets: str, texts: tuple[str, ...] = ()) -> None:
    """No secret in any file beside the store (store, WAL, lock) nor in ``texts``."""
    for path in Path(db).parent.iterdir():
        if path.is_file():
            data = path.read_bytes()
            for s in secrets:
                assert s.encode() not in data, (path, s)
    for text in texts:
        for s in secrets:
            assert s not in text


# -- the redaction -----------------------------------------------------------------------------
def test_redact_removes_registered_secrets_url_credentials_and_auth_headers():
    register_secret("registered-Secret-42")
    register_secret("p@ss word", user="me")
    basic = base64.b64encode(b"me:p@ss word").decode()
    cases = {
        "error registered-Secret-42 here": "error [redacted] here",
        "open http://me:anything@host:8/v1 failed": "open http://[redacted]@host:8/v1 failed",
        "https://a:b@c@host/v1?x=y@z": "https://[redacted]@host/v1?x=y@z",
        "Authorization: Bearer abcdefgh12\nHost: h": "Authorization: [redacted]\nHost: h",
        '{"authorization": "Basic Zm9vOmJhcg=="}': '{"authorization": "[redacted]"}',
        f"sent Basic {basic}": "sent Basic [redacted]",
        "pw p%40ss%20word in a URL": "pw [redacted] in a URL",
        "bad key sk-proj-abcdef1234567890 given": "bad key [redacted] given",
    }
    for text, want in cases.items():
        assert redact(text) == want
    # The other words of a message survive: snapshot names, flags, SQL.
    for text in ("no snapshot named key-2024-v1", "pass --api-key-env NAME",
                 "Basic arithmetic", "--where kind = 'token_1234567'"):
        assert redact(text) == text


# -- defect 4: a 200 whose body echoes the Authorization header --------------------------------
@file_store("reads the store file's bytes")
def test_echoed_authorization_header_is_stored_nowhere(db, cli, monkeypatch):
    seed(db, 2)
    monkeypatch.setenv("SQLSAFE_KEY", KEY)
    with OpenAIServer(handler=lambda body, n: Behaviour("echo_headers")) as server:
        out = cli(*collect_args(db, server, "--api-key-env", "SQLSAFE_KEY", "--max-attempts",
                                "1"), exit_code=1).output
        assert server.chat_requests()[0].headers["authorization"] == f"Bearer {KEY}"
    errors = query(db, "SELECT error FROM calls UNION ALL SELECT error FROM attempts "
                       "UNION ALL SELECT error FROM runs")
    assert any("authorization: [redacted]" in (e or "").lower() for (e,) in errors), errors
    assert_nowhere(db, KEY, texts=(out,))


@file_store("reads the store file's bytes")
def test_echoed_key_never_reaches_eval_items(db, cli, monkeypatch, tmp_path):
    from corpus.records import insert_prompts, make_prompt
    from corpus.store import Store

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with Store.open(db) as s, writing(s) as con:
        insert_prompts(con, [make_prompt(f"{i} + 1?", gold_answer=str(i + 1), split="test")
                             for i in range(4)], "r0")

    def handler(body, n):  # every other question gets the echoing gateway page
        text = json.dumps(body["messages"])
        return Behaviour("echo_headers") if ("0 + 1" in text or "2 + 1" in text) else Behaviour()

    with OpenAIServer(handler=handler) as server:
        out = cli("eval", "run", "--model", f"openai:m@{server.base_url}", "--bench", "store",
                  "--db", db).output
    assert "2 of 4 items failed" in out
    assert_nowhere(db, KEY, texts=(out,))


# -- defect 5: credentials in a base URL ---------------------------------------------------------
@file_store("reads the store file's bytes")
def test_url_credentials_are_sent_as_basic_auth_and_stored_nowhere(db, cli, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    seed(db, 2)
    with OpenAIServer() as server:
        url = server.base_url.replace("http://", f"http://me:{PASSWORD}@")
        out = cli("collect", "--db", db, "--teacher", f"openai:teacher@{url}",
                  "--responder", f"openai:student@{url}", "--max-tokens", "32").output
        auth = {r.headers.get("authorization") for r in server.chat_requests()}
    basic = base64.b64encode(f"me:{PASSWORD}".encode()).decode()
    assert auth == {f"Basic {basic}"}
    assert "2 (2 new)" in out
    config = json.loads(query(db, "SELECT config FROM runs WHERE command = 'collect'")[0][0])
    assert config["teacher"] == f"openai:teacher@{server.base_url.rstrip('/')}"
    assert_nowhere(db, PASSWORD, basic, texts=(out,))


@pytest.mark.parametrize(("url", "message"), [
    (f"http://me:{PASSWORD}@127.0.0.1:99999/v1", "Port out of range"),
    (f"http://me:{PASSWORD}@127.0.0.1:port/v1", "Port could not be cast"),
    (f"http://me:{PASSWORD}@[::1/v1", "Invalid IPv6 URL"),
    (f"http://me:{PASSWORD}@/v1", "expected http(s)://HOST"),
])
@file_store("reads the store file's bytes")
def test_a_malformed_base_url_is_one_line_without_the_password(db, cli, url, message):
    seed(db, 1)
    out = cli(*["collect", "--db", db, "--teacher", f"openai:t@{url}", "--responder",
                f"openai:s@{url}"], exit_code=1).output
    assert message in out and out.count("\n") == 1 and "Traceback" not in out
    stats = cli("stats", "--format", "json", "--db", db).output
    runs = query(db, "SELECT status, error, config FROM runs WHERE command = 'collect'")
    assert all(status == "failed" for status, _, _ in runs)
    assert_nowhere(db, PASSWORD, texts=(out, stats))


def test_model_spec_errors_never_show_url_credentials(db, cli, tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"question": "1 + 1?", "answer": "2"}\n')
    out = cli("eval", "run", "--model", f"openai:@http://me:{PASSWORD}@host/v1", "--bench",
              str(bench), "--db", db, exit_code=1).output
    assert "model name missing" in out and "[redacted]" in out and PASSWORD not in out


def test_ipv6_base_urls_keep_their_brackets():
    from generation.backends.openai_backend import public_spec, strip_credentials

    assert strip_credentials("http://u:p@[::1]:8000/v1/") == "http://[::1]:8000/v1"
    assert public_spec("openai:m@http://[fe80::1]:80/v1") == "openai:m@http://[fe80::1]:80/v1"


def test_a_bug_traceback_is_printed_redacted(monkeypatch, capsys):
    """The console entry point prints an unexpected error's traceback through the redaction."""
    import selfevo.cli as root

    def boom(*args, **kwargs):
        raise RuntimeError(f"cannot reach http://me:{PASSWORD}@host/v1")

    monkeypatch.setattr(root, "cli", boom)
    with pytest.raises(SystemExit) as exit_:
        root.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" in err and "RuntimeError" in err
    assert PASSWORD not in err and "http://[redacted]@host/v1" in err


def test_the_console_script_shows_one_line_for_a_bad_port(db, tmp_path):
    spec = f"openai:m@http://me:{PASSWORD}@127.0.0.1:99999/v1"
    proc = subprocess.run([sys.executable, "-m", "selfevo.cli", "refine", "--model", spec, "2+2?"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Port out of range" in proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout
