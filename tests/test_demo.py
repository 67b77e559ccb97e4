"""``selfevo demo --quick``: the whole pipeline on a tiny offline model; every stage leaves
linked rows, and a re-run redoes nothing."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
from backends import writing

from corpus import Store
from corpus.export import verify_export
from schemas.conversation import record_messages


def test_quick_demo_runs_the_pipeline_and_links_everything(cli, tmp_path, monkeypatch):
    """On a fresh machine: the benchmark lookup finds nothing (an empty SELFEVO_DATA)."""
    monkeypatch.setenv("SELFEVO_DATA", str(tmp_path / "no-benchmarks"))
    out = tmp_path / "demo"
    run = cli("demo", "--quick", "--out", str(out))
    first = run.stdout
    # each step ends with one readable line (what it did, its time); nothing prints a dict
    said = {ln.split(":")[0]: ln for ln in run.stderr.splitlines() if ln[:1] != " "}
    assert list(said) == ["base model", "prompts", "collect", "curate", "meta snapshot",
                          "meta training", "self-evolution", "report"]
    assert "8 meta records, 8 new, 8 qa records" in said["collect"]
    assert said["meta training"].startswith("meta training: 2 steps, ")
    assert "{" not in run.output
    assert "held-out accuracy" in first
    # the five queries, and for a round that kept nothing a sixth that says why (it runs)
    s = Store.open_readonly(out / "selfevo.duckdb")
    kept = s.query("SELECT count(*) FROM decisions WHERE step = 'verdict' AND passed")[0][0]
    s.close()
    assert first.count("selfevo sql --db") == (5 if kept else 6)
    if not kept:
        line = next(ln for ln in first.splitlines() if "kept none" in ln)
        path, sql = re.search(r'selfevo sql --db (\S+) "(.*)"', line).groups()
        why = cli("sql", "--db", path, sql, "--format", "json").output
        assert sum(r["count_star()"] for r in json.loads(why)) == 6
    for step in ("gold-match", "format", "dedup-exact", "dedup-near", "verdict"):
        assert step in first  # the curation funnels are printed
    s = Store.open_readonly(out / "selfevo.duckdb")
    kinds = dict(s.query("SELECT kind, count(*) FROM records GROUP BY 1"))
    assert kinds == {"meta": 8, "qa": 8, "self": 6}
    # meta records: the base model's responses graded by the verifying teacher
    assert s.query("SELECT DISTINCT teacher FROM records WHERE kind = 'meta'") == [("verifying",)]
    # the paper's round: the student's verdict on r̂ (asked for every refined record) filters
    judged = s.query("SELECT count(*) FROM records r JOIN calls c ON c.call_id = "
                     "r.refined_feedback_call_id WHERE r.kind = 'self' AND "
                     "c.purpose = 'refined-feedback'")[0][0]
    assert judged == s.query("SELECT count(*) FROM records WHERE kind = 'self' AND "
                             "refinement IS NOT NULL")[0][0] > 0
    assert {r for (r,) in s.query("SELECT DISTINCT reason FROM decisions WHERE step = "
                                  "'verdict'")} <= {"verdict on r̂ is correct",
                                                    "verdict on r̂ is incorrect",
                                                    "verdict on r̂ is NULL (null=drop)"}
    assert s.query("SELECT count(*) FROM records r JOIN calls c ON c.call_id = "
                   "r.response_call_id WHERE r.kind = 'meta' AND c.status = 'ok'") == [(8,)]
    # curation: every curated record judged by every step
    steps = dict(s.query("SELECT step, count(DISTINCT record_id) FROM decisions GROUP BY 1"))
    assert steps["gold-match"] == 8 and steps["format"] == 8 and steps["verdict"] == 6
    assert steps["dedup-exact"] == 16 and steps["dedup-near"] == 16
    # decontamination still ran, against the held-out generated test problems, and said so
    assert steps["decontam-generated-test"] == 16 and "decontam-gsm8k-test" not in steps
    assert "decontamination against the held-out generated test problems" in run.stderr
    flagged = s.query_dicts("SELECT d.reason, d.detail, r.prompt_id FROM decisions d JOIN "
                            "records r USING (record_id) WHERE step = 'decontam-generated-test' "
                            "AND NOT passed")
    test_ids = {i for (i,) in s.query("SELECT prompt_id FROM prompts WHERE split = 'test'")}
    assert flagged and f"{len(flagged)} of 16 records flagged" in run.stderr
    for f in flagged:  # each names the held-out problem it overlaps, never itself
        item = json.loads(f["detail"])["item_id"]
        assert item in test_ids and item != f["prompt_id"] and item in f["reason"]
    # the meta snapshot holds exactly the records that passed every latest step
    passed = s.query("SELECT count(*) FROM records r JOIN record_latest_passed p "
                     "USING (record_id) WHERE kind IN ('meta', 'qa') AND passed_all")[0][0]
    snaps = dict(s.query("SELECT name, n FROM snapshots"))
    assert snaps["meta"] == passed and "evolve-demo-r1" in snaps
    in_meta = dict(s.query("SELECT kind, count(*) FROM records JOIN snapshot_records USING "
                           "(record_id) JOIN snapshots USING (snapshot_id) WHERE name = 'meta' "
                           "GROUP BY 1"))
    assert set(in_meta) == {"meta", "qa"}  # dedup runs per kind: pairs are not duplicates
    manifest = verify_export(out / "exports" / "meta")
    rows = pq.read_table(out / "exports" / "meta" / "records.parquet").to_pylist()
    assert manifest.n == len(rows) == passed
    for row in rows:
        assert row["messages"] == record_messages(
            kind=row["kind"], prompt=row["prompt"], response=row["response"],
            feedback=row["feedback"], refinement=row["refinement"])
    # two checkpoints, each trained on its snapshot; evals for round 0 and 1, both modes
    # (with the tiny model the verdict filter may keep nothing: then r1 == meta in content,
    # training reproduces the meta weights, and models, identified by content, has one row)
    trained = sorted({h for (h,) in s.query("SELECT snapshot_hash FROM models")})
    hashes = sorted({h for (h,) in s.query("SELECT content_hash FROM snapshots "
                                           "WHERE name IN ('meta', 'evolve-demo-r1')")})
    assert trained == hashes
    models = s.query("SELECT count(*) FROM models")[0][0]
    evals = s.query("SELECT CAST(json_extract(config, '$.round') AS INT) AS r, mode, n "
                    "FROM evals ORDER BY r, mode")
    assert evals == [(0, "direct", 6), (0, "refine", 6), (1, "direct", 6), (1, "refine", 6)]
    report = (out / "report.html").read_text()
    assert "<svg" in report and "evolve-demo-r1" in report
    calls = s.query("SELECT count(*) FROM calls")[0][0]
    s.close()

    again = cli("demo", "--quick", "--out", str(out))
    assert "already done" in again.stderr
    s = Store.open_readonly(out / "selfevo.duckdb")
    assert dict(s.query("SELECT kind, count(*) FROM records GROUP BY 1")) == kinds
    assert s.query("SELECT count(*) FROM calls")[0][0] == calls
    assert s.query("SELECT count(*) FROM models")[0][0] == models


def test_correct_meta_adds_the_correct_side_and_survives_dedup(tmp_path):
    """correct_meta: each training problem's gold rationale, graded by the reference teacher,
    becomes a meta record with verdict correct; dedup (per kind and responder) keeps it beside
    the qa record of the same prompt, and the meta snapshot holds both verdicts."""
    from selfevo.pipeline import Pipeline, PipelineConfig

    p = Pipeline(PipelineConfig(out=tmp_path, model="tiny", n_train=5, n_pool=0, n_test=0,
                                correct_meta=True), log=lambda _: None)
    p.prompts()
    # stand-ins for the base model's answers: wrong on purpose, graded like collect grades
    from corpus.records import insert_records, make_record
    from generation.teachers.reference import ReferenceTeacher

    with Store.open(p.db) as store:
        rows = []
        for q in store.query_dicts("SELECT prompt_id, text, gold_answer, gold_rationale "
                                   "FROM prompts"):
            c = ReferenceTeacher().critique(q["text"], "The answer is -1.", q["gold_answer"],
                                            q["gold_rationale"])
            rows.append(make_record(prompt_id=q["prompt_id"], kind="meta", responder="base",
                                    response="The answer is -1.", feedback=c.feedback,
                                    verdict=c.verdict, refinement=c.refinement,
                                    teacher="reference"))
        with store.run("fixture", {}) as run, writing(store) as con:
            insert_records(con, rows, run.run_id)
    p.add_qa_records()
    p.curate()
    p.meta_snapshot()
    s = Store.open_readonly(p.db)
    by = s.query("SELECT kind, responder, verdict, count(*) FROM records JOIN snapshot_records "
                 "USING (record_id) JOIN snapshots USING (snapshot_id) WHERE name = 'meta' "
                 "GROUP BY ALL ORDER BY ALL")
    assert by == [("meta", "base", "incorrect", 5), ("meta", "gold", "correct", 5),
                  ("qa", "gold", None, 5)]
    gold = s.query_dicts("SELECT feedback, refinement, response FROM records "
                         "WHERE responder = 'gold' AND kind = 'meta'")
    assert all(g["feedback"].rstrip().endswith("Verdict: correct") for g in gold)


def test_demo_decontaminates_against_gsm8k_test_when_the_lookup_finds_it(tmp_path, monkeypatch):
    """With a GSM8K test file in SELFEVO_DATA the corpus is checked against it; a training
    question planted in that file (written here, no benchmark text) is the one flagged."""
    from selfevo.pipeline import Pipeline, PipelineConfig

    p = Pipeline(PipelineConfig(out=tmp_path, model="tiny", n_train=4, n_pool=0,
                                n_test=2), log=lambda _: None)
    p.prompts()
    p.add_qa_records()
    with Store.open_readonly(p.db) as store:
        train = store.query("SELECT prompt_id, text FROM prompts WHERE split = 'train' "
                            "ORDER BY prompt_id")
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    lines = [{"question": train[0][1], "answer": "planted\n#### 1"},
             {"question": "An unrelated question about trains and clocks?", "answer": "#### 2"}]
    (data / "test.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    monkeypatch.setenv("SELFEVO_DATA", str(tmp_path / "data"))
    logs: list[str] = []
    p.log = logs.append
    p.curate()
    s = Store.open_readonly(p.db)
    rows = s.query("SELECT r.prompt_id, d.passed FROM decisions d JOIN records r "
                   "USING (record_id) WHERE d.step = 'decontam-gsm8k-test'")
    assert len(rows) == 4  # the 4 qa records (no meta: nothing was collected)
    assert {pid for pid, passed in rows if not passed} == {train[0][0]}
    assert any(f"GSM8K test ({data / 'test.jsonl'})" in m and "1 of 4" in m for m in logs), logs
