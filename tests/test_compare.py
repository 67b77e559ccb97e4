"""`selfevo eval compare --a … --b …`: paired comparison counted by hand on stored evaluations."""

from __future__ import annotations

import pytest
from test_eval import FIXTURE, ScriptedModel, fixture_script, items, question_of

from corpus.store import Store
from selfevo import SelfevoError
from selfevo.comparison import (
    compare_evaluations,
    compare_neighbours,
    compare_pair,
    resolve_eval,
)
from selfevo.evaluate import BenchItem, evaluate
from selfevo.stats import mcnemar_exact, wilson_interval

# A second model's direct answers: right on q1, q2, q4, q5, q6; wrong on q3.
OTHER = {"q1": "The answer is 5.", "q2": "The answer is 6.", "q3": "The answer is 13.",
         "q4": "The answer is 15.", "q5": "The answer is 1200.", "q6": "The answer is -1."}


def other_script(stage, req):
    q = question_of(req)
    item = next(k for k, v in FIXTURE.items() if v[0] == q)
    return OTHER[item] if stage == "answer" else "Fine.\nVerdict: correct"


@pytest.fixture
def store(db):
    with Store.open(db) as s:
        yield s


@pytest.fixture
def evals(store):
    """A: the fixture model, direct and refine in one run; B: another model, direct."""
    direct, refine = evaluate(store, ScriptedModel(fixture_script, spec="test:a"), items(),
                              benchmark="fixture", modes=["direct", "refine"])
    [other] = evaluate(store, ScriptedModel(other_script, spec="test:b"), items(),
                       benchmark="fixture")
    return direct, refine, other


def test_refine_vs_direct_hand_counted(store, evals):
    direct, refine, _ = evals
    [r] = compare_evaluations(store, "test:a")  # A alone: its direct vs refine
    # By hand (test_eval.FIXTURE): direct right q1 q3 q5; refine right q1 q2 q3 q5.
    # both q1 q3 q5 = 3 · direct only 0 · refine only q2 = 1 · neither q4 q6 = 2
    assert (r["a"]["eval_id"], r["b"]["eval_id"]) == (direct.eval_id, refine.eval_id)
    assert r["table"] == {"both": 3, "a_only": 0, "b_only": 1, "neither": 2}
    assert r["transitions"] == {"wrong_to_right": 1, "right_to_wrong": 0}
    assert r["mcnemar_p"] == 1.0 and r["holm_p"] == 1.0  # one discordant item proves nothing
    assert r["accuracy"]["a"]["correct"] == 3 and r["accuracy"]["b"]["correct"] == 4
    assert (r["accuracy"]["b"]["ci_low"], r["accuracy"]["b"]["ci_high"]) == wilson_interval(4, 6)
    # The critic: the first self-feedback verdict on each initial answer, against gold.
    # q1 5 right, accepted · q2 7 wrong, rejected · q3 12 right, accepted · q4 16 wrong,
    # rejected · q5 1200 right, accepted · q6 1 (gold -1) wrong, accepted.
    c = r["critic"]["b"]
    assert (c["accepted_right"], c["rejected_right"], c["rejected_wrong"],
            c["accepted_wrong"], c["no_verdict"]) == (3, 0, 2, 1, 0)
    assert c["sensitivity"] == 1.0 and c["specificity"] == pytest.approx(2 / 3)
    assert r["critic"]["a"] is None  # a direct evaluation has no critic


def test_two_models_hand_counted(store, evals):
    direct, _, other = evals
    [r] = compare_evaluations(store, "test:a", ["test:b"], bench="fixture")
    # A right q1 q3 q5; B right q1 q2 q4 q5 q6.
    # both q1 q5 = 2 · A only q3 = 1 · B only q2 q4 q6 = 3 · neither 0
    assert r["table"] == {"both": 2, "a_only": 1, "b_only": 3, "neither": 0}
    assert r["mcnemar_p"] == pytest.approx(2 * (1 + 4) / 16) == mcnemar_exact(1, 3)
    assert r["transitions"] is None and r["critic"] == {"a": None, "b": None}
    assert r["b"]["eval_id"] == other.eval_id
    # Refs by eval id prefix work the same; two Bs get Holm-adjusted p-values.
    results = compare_evaluations(store, direct.eval_id[:10], [other.eval_id, "test:a"],
                                  mode="direct")
    assert [x["holm_p"] for x in results] == pytest.approx([min(1, 2 * 0.625), 1.0])
    # Neighbours: A → B → A's refine evaluation, two comparisons.
    chain = compare_neighbours(store, [direct.eval_id, other.eval_id, evals[1].eval_id])
    # B right q1 q2 q4 q5 q6; refine right q1 q2 q3 q5: B only q4 q6, refine only q3
    assert [c["table"]["a_only"] for c in chain] == [1, 2]
    assert [c["table"]["b_only"] for c in chain] == [3, 1]
    assert chain[1]["transitions"] is None  # other model: refine did not start from B's answers
    with pytest.raises(SelfevoError, match="at least two"):
        compare_neighbours(store, [direct.eval_id])


def test_item_sets_that_differ(store, evals):
    direct, _, _ = evals
    [fewer] = evaluate(store, ScriptedModel(other_script, spec="test:c"), items()[:4],
                       benchmark="fixture")
    r = compare_pair(store, resolve_eval(store, direct.eval_id), resolve_eval(store, "test:c"))
    assert r["items"] == {"paired": 4, "only_a": 2, "only_b": 0}
    assert r["accuracy"]["a"]["n"] == 4 == r["accuracy"]["b"]["n"]
    # Same ids, other questions: not the same benchmark.
    [odd] = evaluate(store, ScriptedModel(lambda s, q: "The answer is 1.", spec="test:d"),
                     [BenchItem("q1", "Something else entirely?", "1")], benchmark="fixture")
    with pytest.raises(SelfevoError, match="different question"):
        compare_pair(store, resolve_eval(store, direct.eval_id), resolve_eval(store, odd.eval_id))
    with pytest.raises(SelfevoError, match="no direct evaluation of 'nobody'"):
        resolve_eval(store, "nobody")
    with pytest.raises(SelfevoError, match="no refine evaluation"):
        compare_evaluations(store, "test:b")  # b was evaluated direct only
    assert fewer.n == 4


def test_compare_command(cli, db, evals):
    out = cli("eval", "compare", "--db", db, "--a", "test:a", "--b", "test:b").output
    assert "paired on 6 items of fixture" in out
    assert "right in both 2 · only A 1 · only B 3 · neither 0" in out
    assert "on 4 discordant items: p = 0.625" in out
    out = cli("eval", "compare", "--db", db, "--a", "test:a").output
    assert "wrong→right 1, right→wrong 0 (net +1)" in out
    assert "sensitivity 100.0%" in out and "specificity 66.7%" in out
    bad = cli("eval", "compare", "--db", db, "--a", "nobody", exit_code=1).output
    assert "no direct evaluation of 'nobody'" in bad and "Traceback" not in bad
    assert "fixture" in cli("eval", "compare", "--db", db).output  # the table without --a
