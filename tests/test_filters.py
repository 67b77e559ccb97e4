"""Filter framework and built-in filters: hand-made records, the funnel, decisions rows."""

from __future__ import annotations

import json

import pytest
from backends import both_stores, store_records

from corpus.records import make_prompt, make_record
from corpus.store import Store
from curation.curate import run_filters
from curation.filters import StepError, parse_step, registry
from curation.filters.repetition import repeated_ngram_fraction
from curation.selection import Selection


def check(spec: str, **record):
    """Run one configured step on one hand-made record."""
    r = parse_step(spec).filter.check(record)
    return r[0], r[1], r[2]


# -- each built-in ---------------------------------------------------------------------------
def test_verdict_correct_incorrect_and_null_handling():
    assert check("verdict", verdict="correct")[:2] == (True, 1.0)
    assert check("verdict", verdict="incorrect")[:2] == (False, 0.0)
    passed, score, reason = check("verdict", verdict=None)
    assert (passed, score) == (False, None) and "NULL" in reason
    assert check("verdict:null=keep", verdict=None)[0] is True


def test_gold_match_uses_shared_answer_extraction():
    assert check("gold-match", refinement="So 1,000 - 1 = 999.\n#### 999", gold_answer="999")[0]
    assert check("gold-match", refinement="The answer is $18.00.", gold_answer="18")[0]
    passed, _, reason = check("gold-match", refinement="#### 17", gold_answer="18")
    assert not passed and "17" in reason and "18" in reason
    assert not check("gold-match", refinement="no number here", gold_answer="3")[0]
    # the field parameter: the initial response is right, the refinement is not
    rec = {"response": "#### 5", "refinement": "#### 6", "gold_answer": "5"}
    assert check("gold-match:field=response", **rec)[0]
    assert not check("gold-match", **rec)[0]
    assert not check("gold-match", refinement="#### 5", gold_answer=None)[0]
    assert check("gold-match:no_gold=keep", refinement="#### 5", gold_answer=None)[0]


def test_length_chars_and_tokens_with_unicode():
    text = "ünïcödé 数学 題"  # 12 characters, 3 whitespace tokens
    assert check("length:max_chars=12", refinement=text)[0]
    passed, score, reason = check("length:max_chars=11", refinement=text)
    assert not passed and score == 12 and "> max 11" in reason
    assert check("length:min_tokens=3,max_tokens=3", refinement=text)[:2] == (True, 3.0)
    assert not check("length:min_tokens=4", refinement=text)[0]
    assert not check("length:field=response,min_chars=1", response=None)[0]


def test_empty_treats_null_and_unicode_whitespace_as_empty():
    full = {"response": "r", "feedback": "f", "refinement": "x"}
    assert check("empty", **full)[0]
    passed, score, reason = check("empty", **{**full, "feedback": "\u00a0\u3000\n"})
    assert not passed and score == 1 and "feedback" in reason
    assert not check("empty:fields=refinement", refinement=None)[0]
    assert check("empty:fields=response,refinement", response="a", refinement="b",
                 feedback=None)[0]


def test_refusal_default_and_custom_patterns():
    assert not check("refusal", refinement="I'm sorry, but I cannot help with that.")[0]
    assert not check("refusal", refinement="AS AN AI language model, I …")[0]
    assert check("refusal", refinement="She has 5 apples, so the answer is 5.")[0]
    assert check("refusal", refinement="No way, sir.")[0]
    passed, _, reason = check("refusal:extra=no way\\, sir|nope", refinement="No way, sir.")
    assert not passed and "no way, sir" in reason.lower()
    assert not check("refusal:pattern=^nope$", refinement="nope")[0]


def test_repetition_fraction_and_threshold():
    loop = "the answer is 5 " * 20
    assert repeated_ngram_fraction(loop, 4) > 0.9
    assert repeated_ngram_fraction("a b c d e f g h", 4) == 0.0
    assert not check("repetition", refinement=loop)[0]
    ok = "Tom has 3 apples. He buys 2 more, so he has 3 + 2 = 5 apples.\n#### 5"
    assert check("repetition", refinement=ok)[0]
    assert check("repetition:max_fraction=1.0", refinement=loop)[0]


@pytest.mark.parametrize("on", ["response", "refined", "both"])
@pytest.mark.parametrize("null", ["drop", "keep"])
def test_verdict_on_r_on_the_refinement_or_both_for_every_pair_of_verdicts(on, null):
    """Every (verdict on r, verdict on r̂) pair, against the rule written out: the verdicts
    ``on`` chooses must all be correct; one incorrect drops; unknown ones follow ``null``.
    The step reads only the columns it needs and its reason names what was judged."""
    import itertools

    step = parse_step(f"verdict:on={on},null={null}").filter
    chosen = {"response": ("r",), "refined": ("r̂",), "both": ("r", "r̂")}[on]
    assert step.needed_columns() == tuple(
        {"r": "verdict", "r̂": "refined_verdict"}[w] for w in chosen)
    values = ("correct", "incorrect", None)
    for v_r, v_rr in itertools.product(values, values):
        said = [v for w, v in (("r", v_r), ("r̂", v_rr)) if w in chosen]
        expected = ("incorrect" not in said
                    and (None not in said or null == "keep"))
        passed, score, reason = step.check({"verdict": v_r, "refined_verdict": v_rr})[:3]
        assert passed is expected, (v_r, v_rr)
        assert score == (0.0 if "incorrect" in said else None if None in said else 1.0)
        pairs = [(w, v) for w, v in (("r", v_r), ("r̂", v_rr)) if w in chosen]
        deciding = ([w for w, v in pairs if v == "incorrect"]
                    or [w for w, v in pairs if v is None] or list(chosen))
        assert reason.startswith(f"verdict on {' and '.join(deciding)} is ")


def test_format_needs_verdict_line_and_final_answer():
    good = {"feedback": "Step 2 is wrong.\nVerdict: incorrect", "refinement": "#### 12"}
    assert check("format", **good)[0]
    passed, score, reason = check("format", feedback="Looks fine.", refinement="#### 12")
    assert not passed and score == 1 and "verdict" in reason
    passed, score, _ = check("format", feedback="Looks fine.", refinement="no answer")
    assert (passed, score) == (False, 2)
    assert check("format:require_verdict=false", feedback=None, refinement="#### 3")[0]


def test_repetition_default_keeps_real_gsm8k_rationales():
    from conftest import shared_data

    lines = shared_data("gsm8k", "train.jsonl").read_text().splitlines()[:500]
    f = parse_step("repetition").filter
    kept = sum(f.check({"refinement": json.loads(x)["answer"]})[0] for x in lines)
    assert kept >= 495


# -- parsing steps -------------------------------------------------------------------------
def test_bad_step_names_and_parameters_list_the_valid_ones():
    with pytest.raises(StepError, match="valid steps: .*gold-match.*verdict"):
        parse_step("verdikt")
    with pytest.raises(StepError, match="valid parameters: field, min_chars, max_chars"):
        parse_step("length:max_char=5")
    with pytest.raises(StepError, match="max_chars='lots' is not a valid int"):
        parse_step("length:max_chars=lots")
    with pytest.raises(StepError, match="must be one of: drop, keep"):
        parse_step("verdict:null=maybe")
    with pytest.raises(StepError, match="must be one of: prompt, response"):
        parse_step("length:field=answer,max_chars=3")
    with pytest.raises(StepError, match="at least one of"):
        parse_step("length")
    with pytest.raises(StepError, match="expected k=v"):
        parse_step("verdict:drop")
    with pytest.raises(StepError, match="non-empty label"):
        parse_step("verdict:as=")


def test_parse_step_types_labels_and_commas_in_values():
    step = parse_step("length: field=response , max_tokens=7,as=short")
    assert step.label == "short"
    assert step.filter.params() == {"field": "response", "min_chars": None, "max_chars": None,
                                    "min_tokens": None, "max_tokens": 7}
    assert parse_step("repetition:max_fraction=0.25").filter.max_fraction == 0.25
    assert parse_step("format:require_answer=no").filter.require_answer is False
    assert parse_step("empty:fields=response,refinement").filter.fields == "response,refinement"
    assert set(registry()) >= {"verdict", "gold-match", "length", "empty", "refusal",
                               "repetition", "format"}


# -- the framework over a store -------------------------------------------------------------
def make_store(db: str) -> dict[str, str]:
    """Four records with known outcomes; returns name -> record_id."""
    spec = {
        "good": ("2+2?", "4", "#### 4", "correct"),
        "wrong": ("3+3?", "6", "#### 7", "correct"),
        "unparsed": ("4+4?", "8", "#### 8", None),
        "long": ("5+5?", "10", "#### 10 " + "x" * 100, "correct"),
    }
    made = {}
    for name, (q, gold, refinement, verdict) in spec.items():
        p = make_prompt(q, gold_answer=gold)
        made[name] = (p, make_record(prompt_id=p["prompt_id"], kind="self", round=1,
                                     response="r", feedback=f"f\nVerdict: {verdict or '?'}",
                                     verdict=verdict, refinement=refinement))
    store_records(db, list(made.values()))
    return {name: r["record_id"] for name, (_, r) in made.items()}


@both_stores
def test_every_step_judges_every_record_and_funnel_is_cumulative(db):
    ids = make_store(db)
    steps = [parse_step(s) for s in ("verdict", "gold-match", "length:max_chars=50")]
    with Store.open(db) as store:
        result = run_filters(store, steps, Selection(), chunk_size=3)  # several chunks
        rows = store.query_dicts("SELECT * FROM decisions WHERE run_id = ?", [result.run_id])
        run = store.query_dicts("SELECT * FROM runs WHERE run_id = ?", [result.run_id])[0]
        from corpus.funnel import run_funnel

        with store.connection() as con:
            funnel = run_funnel(con, result.run_id)
    assert len(rows) == 4 * 3  # one row per record per step, kept or not
    by = {(r["record_id"], r["step"]): r for r in rows}
    assert not by[ids["unparsed"], "verdict"]["passed"]
    assert by[ids["unparsed"], "gold-match"]["passed"]  # later steps still see it
    assert not by[ids["wrong"], "gold-match"]["passed"]
    assert not by[ids["long"], "length"]["passed"]
    assert json.loads(by[ids["long"], "length"]["params"])["max_chars"] == 50
    assert result.kept == 1 and result.selected == 4
    config = json.loads(run["config"])
    assert [s["step"] for s in config["steps"]] == ["verdict", "gold-match", "length"]
    assert config["steps"][0]["params"] == {"on": "response", "null": "drop"}
    assert run["status"] == "ok" and json.loads(run["counts"])["kept"] == 1
    assert [(r.step, r.checked, r.passed, r.dropped, r.remaining) for r in funnel.rows] == [
        ("verdict", 4, 3, 1, 3), ("gold-match", 4, 3, 1, 2), ("length", 4, 3, 1, 1)]
    assert all(r.seconds is not None for r in funnel.rows)


@both_stores
def test_selection_and_decision_views(db):
    ids = make_store(db)
    with Store.open(db) as store:
        r1 = run_filters(store, [parse_step("verdict")], Selection(where="verdict = 'correct'"))
        assert r1.selected == 3
        assert run_filters(store, [parse_step("verdict")], Selection(kind="qa")).selected == 0
        r2 = run_filters(store, [parse_step("gold-match")], Selection(kind="self", round=1))
        assert r2.selected == 4
        kept_r2 = {r for (r,) in store.query(
            "SELECT record_id FROM records WHERE kept_by(record_id, ?)", [r2.run_id])}
        latest = {r for (r,) in store.query(
            "SELECT record_id FROM records WHERE kept_by(record_id, "
            "latest_run('curate filter'))")}
        all_steps = {r for (r,) in store.query(
            "SELECT record_id FROM records WHERE kept_latest(record_id)")}
        failed = dict(store.query(
            "SELECT record_id, failed_steps FROM record_latest_passed"))
    assert kept_r2 == latest == {ids["good"], ids["unparsed"], ids["long"]}
    # unparsed was not judged by the verdict run (where excluded it): latest decisions pass
    assert all_steps == {ids["good"], ids["unparsed"], ids["long"]}
    assert failed[ids["wrong"]] == ["gold-match"]


def test_bad_where_and_snapshot_are_clear_errors(db):
    from curation.errors import CurationError
    from schemas.errors import UserError

    make_store(db)
    with Store.open(db) as store:
        with pytest.raises(CurationError, match="bad --where"):
            run_filters(store, [parse_step("verdict")], Selection(where="nosuchcol = 1"))
        with pytest.raises(UserError, match="one SQL condition, without"):
            run_filters(store, [parse_step("verdict")],
                        Selection(where="true; DELETE FROM records"))
        assert store.query("SELECT count(*) FROM records") == [(4,)]
        # a trailing comment does not swallow the rest of the query
        assert run_filters(store, [parse_step("verdict")],
                           Selection(where="kind = 'self' -- mine", round=1)).selected == 4
        with pytest.raises(CurationError, match="no snapshot named 'x'"):
            run_filters(store, [parse_step("verdict")], Selection(snapshot="x"))
        with pytest.raises(StepError, match="appears twice"):
            run_filters(store, [parse_step("verdict"), parse_step("verdict")], Selection())


# -- CLI -------------------------------------------------------------------------------------
def test_cli_filter_prints_funnel_and_writes_rows(cli, db):
    make_store(db)
    out = cli("curate", "filter", "--db", db, "--step", "verdict:null=keep",
              "--step", "length:max_chars=50,as=short", "--kind", "self").output
    assert "verdict" in out and "short" in out and "remaining" in out
    assert "kept 3 of 4 records" in out and "{" not in out
    rows = cli("sql", "--db", db, "--format", "json",
               "SELECT step, count(*) AS n FROM decisions GROUP BY step ORDER BY step").output
    assert json.loads(rows) == [{"step": "short", "n": 4}, {"step": "verdict", "n": 4}]


def test_filter_draws_records_done_on_a_terminal(db, tty):
    from corpus.display import progress

    make_store(db)
    with Store.open(db) as store, progress("filter", console=tty) as bar:
        res = run_filters(store, [parse_step("verdict:null=keep")], Selection(kind="self"),
                          progress=bar, chunk_size=3)
    assert res.selected == 4 and "4/4" in tty.file.getvalue()


def test_cli_errors_and_steps_listing(cli, db):
    make_store(db)
    err = cli("curate", "filter", "--db", db, "--step", "nope", exit_code=1).output
    assert "unknown step 'nope'; valid steps:" in err and "Traceback" not in err
    err = cli("curate", "filter", "--db", db, "--step", "length:bogus=1", exit_code=1).output
    assert "valid parameters: field" in err
    out = cli("curate", "steps").output
    for name in ("verdict", "gold-match", "length", "empty", "refusal", "repetition",
                 "format", "max_fraction", "no_gold"):
        assert name in out


@both_stores
def test_stats_shows_funnel_of_latest_curation_runs(cli, db):
    make_store(db)
    cli("curate", "filter", "--db", db, "--step", "verdict", "--step", "gold-match")
    out = json.loads(cli("stats", "--db", db, "--format", "json").output)
    funnel = out["Curation funnels (latest 3 runs)"]
    assert [(r["step"], r["remaining"]) for r in funnel] == [
        ("(selected)", 4), ("verdict", 3), ("gold-match", 2)]
