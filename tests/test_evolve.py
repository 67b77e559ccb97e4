"""Self-evolution end to end on a tiny offline model: rows link up, replay per strategy,
kill-and-resume between stages redoes nothing finished."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from backends import writing

from corpus.importers import import_generated
from corpus.records import insert_records, make_record
from corpus.snapshots import create_snapshot, snapshot_record_ids
from corpus.store import Store
from corpus.storespec import StoreSpec
from generation.backends.hf import identity_spec
from generation.teachers.reference import ReferenceTeacher

TRAIN = ["max_steps=2", "batch_size=2", "max_len=256", "lr=1e-3"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    from trainer.testing.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def make_store(db: str) -> None:
    """Generated problems (train/test) and a meta-skill snapshot from the reference teacher."""
    teacher = ReferenceTeacher()
    with Store.open(db) as store:
        import_generated(store, 6, seed=1, split="train")
        import_generated(store, 3, seed=2, split="test")
        prompts = store.query_dicts("SELECT prompt_id, text, gold_answer, gold_rationale "
                                    "FROM prompts WHERE split = 'train' ORDER BY prompt_id")
        rows = []
        for i, p in enumerate(prompts):
            response = f"I think the answer is {i}."
            c = teacher.critique(p["text"], response, p["gold_answer"], p["gold_rationale"])
            rows.append(make_record(prompt_id=p["prompt_id"], kind="meta", response=response,
                                    feedback=c.feedback, verdict=c.verdict,
                                    refinement=c.refinement, teacher="reference"))
        with store.run("fixture", {}) as run, writing(store) as con:
            insert_records(con, rows, run.run_id)
        create_snapshot(store, "meta", "kind = 'meta'")


def evolve_args(db: str, tiny: str, out: Path, strategy: str, rounds: int = 2) -> list[str]:
    args = ["evolve", "--db", db, "--student", f"hf:{tiny}", "--base", tiny,
            "--prompts", "split = 'train'", "--prompts-per-round", "3", "--rounds", str(rounds),
            "--meta", "meta", "--strategy", strategy, "--filter", "verdict:null=keep",
            "--eval", "store:split = 'test'", "--eval-mode", "both", "--max-tokens", "8",
            "--out", str(out), "--name", f"t-{strategy}"]
    for t in TRAIN:
        args += ["--train", t]
    return args


@pytest.mark.parametrize(("strategy", "db"), [("restart", "file"), ("continual", "file"),
                                             ("restart", "lake")], indirect=["db"])
def test_two_rounds_link_up(cli, db, tiny, tmp_path, strategy):
    """restart runs the paper's round (the defaults); continual the ablations, one flag each."""
    make_store(db)
    extra = ["--generate-prompts", "2"] if strategy == "continual" else []
    ablation = ["--verdict-on", "response", "--self-layout", "meta+answer"] if extra else []
    out = cli(*evolve_args(db, tiny, tmp_path / "out", strategy), *extra, *ablation).output
    # one readable line per finished stage (no JSON), then the rounds table
    assert "{" not in out
    for t, stage in [(0, "eval")] + [(t, st) for t in (1, 2) for st in (
            "generate", "filter", "snapshot", "export", "train", "eval")]:
        assert f"round {t} {stage}: " in out
    assert re.search(r"round 1 filter: \d+ selected, \d+ kept", out)
    assert "round 2 train: 2 steps" in out
    assert "round 0 eval: store:split = 'test' (n=3): direct " in out
    s = Store.open_readonly(db)
    # records of both rounds, made by the round's student, one per prompt of the round
    per_round = dict(s.query("SELECT round, count(*) FROM records WHERE kind = 'self' "
                             "GROUP BY round"))
    used = dict(s.query("SELECT round, count(*) FROM evolve_prompts GROUP BY round"))
    assert per_round == used
    if not extra:
        assert used == {1: 3, 2: 3}
    if extra:  # new questions written by the student, with their provenance
        new = s.query_dicts("SELECT p.meta, c.purpose FROM prompts p JOIN calls c ON "
                            "c.call_id = json_extract_string(p.meta, '$.call_id') "
                            "WHERE p.source = 'evolve:t-continual'")
        assert new and all(r["purpose"] == "new-question" for r in new)
        assert all(len(json.loads(r["meta"])["seeds"]) == 3 for r in new)
        by_round = [json.loads(r["meta"])["round"] for r in new]
        assert used == {t: 3 + by_round.count(t) for t in (1, 2)}
    # round 2 was answered by M_2, the checkpoint round 1 trained (base + its adapter)
    m2 = json.loads(s.query("SELECT counts FROM runs WHERE command = 'evolve train' AND "
                            "CAST(json_extract(config, '$.round') AS INT) = 1")[0][0])["student"]
    assert m2.startswith("hf:") and m2.endswith("/t-" + strategy + "/r1/model/final")
    # records name it as its calls do: readable names, no machine path
    responders = s.query("SELECT DISTINCT responder FROM records WHERE round = 2")
    assert responders == [(identity_spec(m2),)] and "/" not in responders[0][0]
    assert s.query("SELECT DISTINCT c.model FROM records r JOIN calls c ON "
                   "c.call_id = r.response_call_id WHERE r.round = 2") == responders
    # one stage run of each kind per round, children of the evolve run
    stages = s.query("SELECT command, CAST(json_extract(config, '$.round') AS INT), "
                     "parent_run_id FROM runs WHERE command LIKE 'evolve %' AND status = 'ok'")
    parent = s.query("SELECT run_id FROM runs WHERE command = 'evolve'")[0][0]
    assert all(p == parent for _, _, p in stages)
    done = sorted((c.split()[1], r) for c, r, _ in stages)
    assert done == sorted([("eval", 0)] + [(st, t) for t in (1, 2) for st in
                          ("generate", "filter", "snapshot", "export", "train", "eval")])
    # the filter judged every self record of its round
    for t in (1, 2):
        judged = s.query("SELECT count(DISTINCT d.record_id) FROM decisions d JOIN records r "
                         "USING (record_id) WHERE r.round = ? AND d.step = 'verdict'", [t])
        assert judged == [(per_round[t],)]
    check_round_choices(s, strategy, paper=not ablation, out=tmp_path / "out")
    # replay: the meta snapshot is in every round; restart also keeps round 1 in round 2
    meta = set(snapshot_record_ids(s, "meta"))
    r1 = set(snapshot_record_ids(s, f"evolve-t-{strategy}-r1"))
    r2 = set(snapshot_record_ids(s, f"evolve-t-{strategy}-r2"))
    assert meta <= r1 and meta <= r2
    self_r1 = {r for (r,) in s.query("SELECT record_id FROM records WHERE round = 1")}
    if strategy == "restart":
        assert r1 <= r2 and self_r1 <= r2
    else:
        assert not (self_r1 & r2)
    # models trained on exactly those snapshots; evals linked to them
    models = s.query("SELECT m.model_id, s.name FROM models m JOIN snapshots s "
                     "ON s.content_hash = m.snapshot_hash ORDER BY s.name")
    assert [n for _, n in models] == [f"evolve-t-{strategy}-r1", f"evolve-t-{strategy}-r2"]
    evals = s.query("SELECT CAST(json_extract(config, '$.round') AS INT) AS rnd, mode, model_id "
                    "FROM evals ORDER BY rnd, mode")
    assert [(r, m) for r, m, _ in evals] == [(t, m) for t in (0, 1, 2)
                                             for m in ("direct", "refine")]
    assert {mid for r, _, mid in evals if r > 0} == {mid for mid, _ in models}


def check_round_choices(s: Store, strategy: str, paper: bool, out: Path) -> None:
    """The paper's round: feedback on r̂ asked (its call is the feedback request with r̂ in
    the place of r), the filter reads that verdict, self records train p → r̂. The
    ablation: no feedback on r̂, the filter reads the verdict on r, both layouts trained.
    Either way the choices are in the evolve run's config."""
    from corpus.export import read_manifest
    from schemas.conversation import FEEDBACK_INSTRUCTION

    config = json.loads(s.query("SELECT config FROM runs WHERE command = 'evolve'")[0][0])
    assert (config["verdict_on"], config["self_layout"]) == (
        ("refined", "answer") if paper else ("response", "meta+answer"))
    judged = s.query_dicts(
        "SELECT r.refinement, r.refined_feedback, c.messages, c.purpose, c.response "
        "FROM records r JOIN calls c ON c.call_id = r.refined_feedback_call_id "
        "WHERE r.kind = 'self'")
    refined = s.query("SELECT count(*) FROM records WHERE kind = 'self' "
                      "AND refinement IS NOT NULL")[0][0]
    assert len(judged) == (refined if paper else 0)
    for j in judged:
        msgs = json.loads(j["messages"])
        assert j["purpose"] == "refined-feedback" and j["response"] == j["refined_feedback"]
        assert msgs[1]["content"] == j["refinement"]
        assert msgs[-1]["content"] == FEEDBACK_INSTRUCTION and len(msgs) == 3
    reasons = {r for (r,) in s.query("SELECT DISTINCT reason FROM decisions "
                                     "WHERE step = 'verdict'")}
    assert reasons and all(r.startswith("verdict on r̂ " if paper else "verdict on r ")
                           for r in reasons)
    manifest = read_manifest(out / f"t-{strategy}" / "r1" / "data")
    assert manifest.layouts == {"meta": "meta", "qa": "answer",
                                "self": "answer" if paper else "meta+answer"}


KILLED = -9
KILL_AFTER_STAGE = Path(__file__).resolve().parent / "kill_after_stage.py"


def test_killed_evolve_resumes_without_redoing_stages(db, tiny, tmp_path):
    make_store(db)
    args = evolve_args(db, tiny, tmp_path / "out", "restart", rounds=1)
    cmd = [sys.executable, "-m", "selfevo", *args]
    first = subprocess.run([sys.executable, str(KILL_AFTER_STAGE), "r1:snapshot", *args],
                           capture_output=True, text=True)
    assert first.returncode == KILLED, first.stderr[-2000:]
    s = Store.open_readonly(db)
    before = s.query("SELECT command, run_id FROM runs WHERE command LIKE 'evolve %' "
                     "AND status = 'ok' ORDER BY started_at")
    assert [c for c, _ in before] == ["evolve eval", "evolve generate", "evolve filter",
                                      "evolve snapshot"]
    calls_before = s.query("SELECT count(*) FROM calls")[0][0]
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "generate: already done" in second.stderr
    after = s.query("SELECT command, run_id FROM runs WHERE command LIKE 'evolve %' "
                    "AND status = 'ok' ORDER BY started_at")
    # the finished stages kept their runs; only the rest ran, once each
    assert after[:4] == before
    assert [c for c, _ in after[4:]] == ["evolve export", "evolve train", "evolve eval"]
    statuses = dict(s.query("SELECT status, count(*) FROM runs WHERE command = 'evolve' "
                            "GROUP BY status"))
    assert statuses == {"killed": 1, "ok": 1}
    # generation was not redone: only the round-1 eval's calls are new
    new_calls = s.query("SELECT count(*) FROM calls")[0][0] - calls_before
    evals_calls = s.query("SELECT count(*) FROM calls c JOIN runs r USING (run_id) "
                          "WHERE r.command = 'eval run' AND r.run_id > ?", [after[4][1]])[0][0]
    assert new_calls == evals_calls
    counts = json.loads(s.query("SELECT counts FROM runs WHERE command = 'evolve' "
                                "AND status = 'ok'")[0][0])
    assert counts == {"rounds": 1}


def test_production_code_carries_no_fault_hook():
    """Tests kill at a stage boundary with tests/kill_after_stage.py, not a switch in the app."""
    repo = Path(__file__).resolve().parent.parent
    for package in ("corpus", "curation", "generation", "selfevo", "trainer", "schemas"):
        for path in (repo / package).rglob("*.py"):
            text = path.read_text("utf-8")
            assert "signal.SIGKILL" not in text and "_FAULT_" not in text, path


def test_a_round_that_keeps_nothing_says_so_with_a_query_that_works(cli, db, tiny, tmp_path):
    make_store(db)
    args = evolve_args(db, tiny, tmp_path / "out", "restart", rounds=1)
    args[args.index("verdict:null=keep")] = "verdict"  # the tiny model writes no verdict line
    out = cli(*args, "--train", "max_len=1024").output  # the meta records alone must fit
    line = next(ln for ln in out.splitlines() if "kept none" in ln)
    assert "kept none of 3 self records" in line and "replay only" in line
    command = shlex.split(line.split("selfevo ", 1)[1])  # as a shell would read it
    assert command[:2] == ["sql", "--db"] and StoreSpec.parse(command[2]) == StoreSpec.parse(db)
    why = cli(*command, "--format", "json").output
    assert json.loads(why) == [{"step": "verdict", "reason": "verdict on r̂ is NULL (null=drop)",
                                "count_star()": 3}]
    snaps = dict(Store.open_readonly(db).query("SELECT name, content_hash FROM snapshots"))
    assert snaps["evolve-t-restart-r1"] == snaps["meta"]


def test_round_selection_finds_records_named_before_and_after_readable_names(db, tmp_path):
    """A generate stage that ran before responders were readable names wrote the student's
    path spec; after an upgrade the resumed filter stage must still select its records."""
    from corpus.records import insert_prompts, make_prompt
    from curation.selection import count_selected
    from selfevo.evolve import Evolution, EvolveConfig

    folder = tmp_path / "runs" / "final"
    folder.mkdir(parents=True)
    student = f"hf:{folder}"
    prompt = make_prompt("Ann has 2 apples and buys 3. How many?")
    with Store.open(db) as store:
        with store.run("fixture", {}) as run, writing(store) as con:
            insert_prompts(con, [prompt], run.run_id)
            insert_records(con, [make_record(prompt_id=prompt["prompt_id"], kind="self", round=1,
                                             response=f"answer {i}", responder=who)
                                 for i, who in enumerate([student, "hf:final", "hf:other"])],
                           run.run_id)
            con.execute("INSERT INTO evolve_prompts VALUES ('x', 1, ?, ?)",
                        [prompt["prompt_id"], run.run_id])
        evolution = Evolution(store, EvolveConfig(student=student, base="b", prompts="true",
                                                  name="x"))
        assert count_selected(store, evolution.round_selection(1, student)) == 2


def test_stage_lines_read_as_words():
    from selfevo.evolve import stage_line

    assert stage_line("filter", 1, {"filter_run": "r9", "selected": 1200, "kept": 3}) == (
        "round 1 filter: 1,200 selected, 3 kept, filter run r9")
    assert stage_line("train", 2, {"steps": 20, "loss": 0.51234, "model_id": "h1:ab",
                                   "final_dir": "/x/final", "base": "/b"}) == (
        "round 2 train: 20 steps, 0.5123 loss, model h1:ab")
    evals = [{"benchmark": "gsm8k", "mode": m, "n": 50, "accuracy": a, "ci_low": a - 0.1,
              "ci_high": a + 0.1, "eval_id": "h1:e"} for m, a in (("direct", 0.3), ("refine", 0.4))]
    assert stage_line("eval", 0, {"evals": evals}) == (
        "round 0 eval: gsm8k (n=50): direct 30.0% [20.0, 40.0], refine 40.0% [30.0, 50.0]")


def test_evolve_draws_a_bar_per_stage_on_a_terminal(db, tiny, tmp_path, tty):
    from corpus.display import progress
    from selfevo.evolve import EvolveConfig, evolve

    make_store(db)
    config = EvolveConfig(student=f"hf:{tiny}", base=tiny, prompts="split = 'train'",
                          prompts_per_round=2, meta="meta", filters=["verdict:null=keep"],
                          gen={"temperature": 0.0, "max_tokens": 4}, out=str(tmp_path / "o"),
                          train={"max_steps": 2, "max_len": 256}, name="bars")
    lines = []
    with progress(console=tty) as display:
        evolve(db, config, log=lines.append, display=display)
    drawn = tty.file.getvalue()
    # generate's last phase (the paper's round: the feedback on r̂) is drawn when it ends
    for stage in ("generate: refined-feedback", "filter", "snapshot", "export", "train"):
        assert f"round 1 {stage}" in drawn
    assert "2/2" in drawn and "loss " in drawn  # the train stage's steps
    assert [ln.split(":")[0].strip() for ln in lines if ": " in ln][-5:] == [
        f"round 1 {st}" for st in ("generate", "filter", "snapshot", "export", "train")]


def test_bad_options_fail_before_anything_runs(cli, db):
    Store.open(db).close()
    out = cli("evolve", "--db", db, "--student", "openai:m@http://127.0.0.1:9/v1", "--base", "b",
              "--prompts", "true", "--strategy", "continual", exit_code=1).output
    assert "--strategy continual" in out and "hf:BASE+ADAPTER" in out
    out = cli("evolve", "--db", db, "--student", "hf:x", "--base", "b", "--prompts", "true",
              "--rounds", "0", exit_code=1).output
    assert "--rounds must be at least 1" in out
    assert Store.open_readonly(db).query("SELECT count(*) FROM runs") == [(0,)]


def test_students_served_by_an_openai_server_get_each_rounds_adapter(cli, db, tiny, tmp_path):
    """--serve: M_{t+1} is loaded into the server (vLLM's runtime LoRA API) and used by name;
    a restarted server gets the adapters again on resume, and nothing finished is redone."""
    from openai_server import OpenAIServer

    make_store(db)
    out = tmp_path / "out"

    def run(server: OpenAIServer) -> None:
        args = evolve_args(db, tiny, out, "restart")
        args[args.index("--student") + 1] = f"openai:meta@{server.base_url}"
        args[args.index("--name") + 1] = "srv"
        # the server's answers are longer than the tiny model's 8 tokens
        cli(*args, "--train", "max_len=1024", "--serve", server.base_url)

    with OpenAIServer(model="meta", strict_models=True) as server:
        run(server)
        assert server.adapters == {"srv-r2": str((out / "srv/r1/model/final").resolve()),
                                   "srv-r3": str((out / "srv/r2/model/final").resolve())}
        assert all(Path(p, "adapter_config.json").exists() for p in server.adapters.values())
        # round 1 asked M_1 (the served meta model), round 2 asked M_2 by its adapter name,
        # round 2's eval asked M_3; every chat request named a model the server had
        used = [r.body["model"] for r in server.chat_requests()]
        assert {"meta", "srv-r2", "srv-r3"} == set(used)
        assert all(r.status == 200 for r in server.chat_requests())
    s = Store.open_readonly(db)
    url = server.base_url
    assert s.query("SELECT round, responder FROM records WHERE kind = 'self' GROUP BY ALL "
                   "ORDER BY 1") == [(1, f"openai:meta@{url}"), (2, f"openai:srv-r2@{url}")]
    trains = [json.loads(c) for (c,) in s.query(
        "SELECT counts FROM runs WHERE command = 'evolve train' ORDER BY started_at")]
    assert [c["student"] for c in trains] == [f"openai:srv-r{t}@{url}" for t in (2, 3)]
    calls = s.query("SELECT count(*) FROM calls")[0][0]

    with OpenAIServer(model="meta", strict_models=True) as restarted:  # a fresh server
        run(restarted)
        assert set(restarted.adapters) == {"srv-r2", "srv-r3"}
        assert restarted.chat_requests() == []
    assert s.query("SELECT count(*) FROM calls")[0][0] == calls


def test_serve_refuses_what_a_served_adapter_cannot_be(cli, db, tmp_path):
    from openai_server import OpenAIServer

    from generation.backends.served_adapters import ensure_adapter
    from generation.errors import GenerationError

    Store.open(db).close()
    out = cli("evolve", "--db", db, "--student", "hf:x", "--base", "b", "--prompts", "true",
              "--strategy", "continual", "--serve", "http://127.0.0.1:9/v1", exit_code=1).output
    assert "--serve" in out and "--strategy restart" in out
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(GenerationError, match="no adapter_config.json"):
        ensure_adapter("http://127.0.0.1:9/v1", "a", adapter)
    (adapter / "adapter_config.json").write_text("{}")
    with OpenAIServer(lora=False) as server, pytest.raises(
            GenerationError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
        ensure_adapter(server.base_url, "a", adapter)
    with OpenAIServer() as server:
        assert ensure_adapter(server.base_url, "a", adapter) is True
        assert ensure_adapter(server.base_url, "a", adapter) is False  # listed: not re-sent
        loads = [r for r in server.requests if r.path.endswith("/load_lora_adapter")]
        assert len(loads) == 1 and loads[0].body == {"lora_name": "a",
                                                     "lora_path": str(adapter.resolve())}


def test_an_evolve_of_a_name_live_on_another_machine_is_refused_on_a_lake(cli, lake_db, tiny,
                                                                          tmp_path):
    """Its stages resume from the store, so two of one name at once would redo each other's:
    the second is refused before any stage runs (a file store's job lock does the same)."""
    make_store(lake_db)
    with Store.open(lake_db) as store:
        store.transact(lambda con: [con.execute(
            "INSERT INTO runs (run_id, command, config, code_version, started_at, status, pid,"
            " host, heartbeat_at) VALUES ('r-elsewhere', 'evolve', '{}', 'v', now(), 'running',"
            " 1, 'other-machine', now())"), con.execute(
            "INSERT INTO job_locks (lock_key, held_by) VALUES ('evolve:t-restart', 'r-elsewhere')")])
    result = cli(*evolve_args(lake_db, tiny, tmp_path / "out", "restart", rounds=1),
                 exit_code=None)
    out = result.output
    assert result.exit_code != 0 and out.strip().splitlines()[-1] == (
        "Error: evolve 't-restart' is in use by run r-elsewhere on other-machine (PID 1); "
        "wait for it to finish or choose others")
    with Store.open_readonly(lake_db) as store:
        assert store.query("SELECT status FROM runs WHERE command = 'evolve' AND run_id <> "
                           "'r-elsewhere'") == [("failed",)]
        assert store.query("SELECT count(*) FROM runs WHERE parent_run_id IS NOT NULL") == [(0,)]
