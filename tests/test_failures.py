"""Failed requests are failures, never results (issue 12, defect 6).

An unreachable server or a 401 on every request ends in a one-line error with counts and a
non-zero exit, the run row ``failed``, and nothing stored as the model's answer; partial
failure is reported with counts.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from openai_server import Behaviour, OpenAIServer  # noqa: E402
from test_collect import collect_args, query, seed  # noqa: E402


@pytest.fixture
def dead_url() -> str:
    """A base URL where nothing listens (a port just released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-failures-0123456789abcdef")


def test_eval_against_an_unreachable_server_stores_no_accuracy(db, cli, dead_url):
    seed(db, 3, split="test")
    out = cli("eval", "run", "--model", f"openai:m@{dead_url}", "--bench", "store", "--db", db,
              exit_code=1).output
    assert "3 of 3 items (direct) failed (connection 3)" in out and out.count("\n") == 1
    assert "nothing was stored as a result" in out
    assert query(db, "SELECT count(*) FROM evals")[0][0] == 0
    assert query(db, "SELECT count(*) FROM eval_items")[0][0] == 0
    run = query(db, "SELECT status, error FROM runs WHERE command = 'eval run'")
    assert run[0][0] == "failed" and "connection 3" in run[0][1]


def test_collect_where_every_request_gets_401_exits_non_zero(db, cli):
    seed(db, 3)
    with OpenAIServer(handler=lambda body, n: Behaviour.error(401)) as server:
        out = cli(*collect_args(db, server), exit_code=1).output
    assert "3 of 3 requests failed (auth 3)" in out and out.rstrip().splitlines()[-1].startswith(
        "Error: 3 of 3 requests failed (auth 3): 401 not authorised")
    assert query(db, "SELECT count(*) FROM records")[0][0] == 0
    assert query(db, "SELECT status FROM runs WHERE command = 'collect'") == [("failed",)]
    assert query(db, "SELECT count(*) FROM calls WHERE status = 'failed'")[0][0] == 3


def test_collect_with_some_failures_reports_them_with_counts(db, cli):
    seed(db, 4)

    def handler(body, n):  # the responder's first request is refused, the rest are answered
        return Behaviour.error(403) if n == 0 else Behaviour()

    with OpenAIServer(handler=handler) as server:
        out = cli(*collect_args(db, server)).output
    assert "1 of 10 requests failed (auth 1)" in out and "retried on the next run" in out
    assert query(db, "SELECT count(*) FROM records")[0][0] == 3
    assert query(db, "SELECT status FROM runs WHERE command = 'collect'") == [("ok",)]


def test_refine_with_every_request_failed_exits_non_zero(db, cli):
    with OpenAIServer(handler=lambda body, n: Behaviour.error(401)) as server:
        out = cli("refine", "--model", f"openai:m@{server.base_url}", "--db", db, "2 + 2?",
                  exit_code=1).output
    assert "1 of 1 questions failed (auth 1)" in out and out.count("\n") == 1
    assert query(db, "SELECT status FROM runs WHERE command = 'refine'") == [("failed",)]


def test_refine_with_some_failures_warns_with_counts(cli, tmp_path):
    questions = tmp_path / "q.txt"
    questions.write_text("What is 1 + 1?\nWhat is 2 + 2?\n")

    def handler(body, n):
        return Behaviour.error(403) if "2 + 2" in json.dumps(body["messages"]) else Behaviour()

    with OpenAIServer(handler=handler) as server:
        result = cli("refine", "--model", f"openai:m@{server.base_url}", "--input",
                     str(questions))
    assert "warning: 1 of 2 questions failed (auth 1)" in result.output


def test_evolve_stops_when_the_students_requests_all_fail(db, cli, tmp_path):
    seed(db, 2)
    with OpenAIServer(handler=lambda body, n: Behaviour.error(401)) as server:
        out = cli("evolve", "--db", db, "--student", f"openai:m@{server.base_url}", "--base",
                  "b", "--prompts", "split = 'train'", "--out", str(tmp_path / "out"),
                  exit_code=1).output
    assert "2 of 2 round 1 questions failed (auth 2)" in out
    assert query(db, "SELECT count(*) FROM records")[0][0] == 0
    statuses = dict(query(db, "SELECT command, status FROM runs WHERE command LIKE 'evolve%'"))
    assert set(statuses.values()) == {"failed"}
