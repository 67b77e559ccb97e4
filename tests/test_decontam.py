"""Benchmark decontamination: planted GSM8K/SVAMP test items are found, training data is not."""

from __future__ import annotations

import json
import random
import re

import pytest
from backends import both_stores, store_records
from conftest import shared_data

from corpus.records import make_prompt, make_record
from corpus.store import Store
from curation.decontam import BenchmarkIndex, decontaminate, load_benchmark, normalise_tokens
from curation.errors import CurationError
from curation.selection import Selection


def test_normalisation_unifies_numbers_case_width_and_punctuation():
    a = normalise_tokens("Janet’s ducks lay 16 eggs; she sells them for $2.50 each.")
    b = normalise_tokens("JANET’S  ducks\nlay sixteen eggs, she sells them for ＄３.７５ each")
    assert a == b
    assert normalise_tokens("twenty-five apples") == normalise_tokens("25 apples") == ["0", "apples"]
    assert normalise_tokens("1,200.5 or 3/4") == ["0", "or", "0"]
    assert normalise_tokens("Ünïcode café") == ["ünïcode", "café"]


@pytest.fixture(scope="module")
def gsm8k_test():
    name, items, _ = load_benchmark("gsm8k-test", str(shared_data("gsm8k", "test.jsonl")))
    return name, items


@pytest.fixture(scope="module")
def index(gsm8k_test):
    return BenchmarkIndex.build(*gsm8k_test, n=8)


def renumber(text: str, seed: int) -> str:
    rng = random.Random(seed)
    return re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 50)), text)


def noisy_case_whitespace(text: str) -> str:
    words = text.split()
    return "  ".join(w.upper() if i % 3 == 0 else w.lower() for i, w in enumerate(words)) + "\n"


def test_planted_test_questions_are_found_in_every_disguise(index, gsm8k_test):
    _, items = gsm8k_test
    for item_id, q in items[:40]:
        for variant in (q, renumber(q, 1), noisy_case_whitespace(q),
                        f"Question: {q}\nAnswer step by step."):
            coverage, detail = index.match(variant)
            assert coverage >= 0.5, (item_id, variant)
            assert detail["item_id"] == item_id
            assert len(detail["ngram"].split()) == 8


def test_ordinary_training_questions_are_not_flagged(index):
    from corpus.wordproblems import generate_problems

    lines = shared_data("gsm8k", "train.jsonl").read_text().splitlines()
    train = [json.loads(x)["question"] for x in random.Random(0).sample(lines, 1500)]
    flagged = [t for t in train if index.match(t)[0] >= 0.5]
    assert len(flagged) <= 2  # GSM8K train holds a handful of true near-copies of test items
    generated = [p["text"] for p in generate_problems(500, seed=3)]
    assert not [t for t in generated if index.match(t)[0] >= 0.5]


def make_store(db: str, texts: dict[str, str]) -> dict[str, str]:
    made = {}
    for name, text in texts.items():
        p = make_prompt(text)
        made[name] = (p, make_record(
            prompt_id=p["prompt_id"], kind="meta", response="r",
            refinement=f"We solve: {text}" if name == "in-refinement" else "x"))
    store_records(db, list(made.values()))
    return {name: r["record_id"] for name, (_, r) in made.items()}


def test_decontam_draws_records_checked_on_a_terminal(db, tmp_path, tty):
    from corpus.display import progress

    bench = tmp_path / "held-out.jsonl"  # project-written items, not benchmark text
    bench.write_text(json.dumps({"id": "h-1", "question": "A farmer plants 12 rows of 9 "
                                 "cabbages each and sells a third of them at the market."}) + "\n")
    ids = make_store(db, {"leak": "A farmer plants 40 rows of 7 cabbages each and sells a "
                          "third of them at the market. How many are left?",
                          "clean": "What is 2 + 2?"})
    name, items, _ = load_benchmark(str(bench), None)
    with Store.open(db) as store, progress("decontam", console=tty) as bar:
        res = decontaminate(store, BenchmarkIndex.build(name, items, 8), Selection(),
                            progress=bar)
    assert (res.selected, res.flagged) == (2, 1) and len(ids) == 2
    drawn = tty.file.getvalue()
    assert "2/2" in drawn and "1 flagged" in drawn


@both_stores
def test_cli_decontam_writes_decisions_with_item_and_ngram(cli, db, gsm8k_test):
    _, items = gsm8k_test
    item_id, q = items[7]
    ids = make_store(db, {"leak": renumber(q, 5), "clean": "Tom has 3 apples and buys 4 more. "
                          "How many apples does Tom have now?", "in-refinement": "What is 2+2?"})
    path = str(shared_data("gsm8k", "test.jsonl"))
    out = cli("curate", "decontam", "--db", db, "--against", "gsm8k-test", "--path", path).output
    assert "decontam-gsm8k-test" in out and "1 of 3 records" in out
    with Store.open_readonly(db) as store:
        rows = {r["record_id"]: r for r in store.query_dicts(
            "SELECT d.*, r.command FROM decisions d JOIN runs r USING (run_id)")}
    leak = rows[ids["leak"]]
    detail, params = json.loads(leak["detail"]), json.loads(leak["params"])
    assert not leak["passed"] and leak["score"] >= 0.5 and leak["command"] == "curate decontam"
    assert detail["item_id"] == item_id and detail["field"] == "prompt"
    assert params["ngram"] == 8 and params["against"] == "gsm8k-test"
    assert len(params["sha256"]) == 64
    assert rows[ids["clean"]]["passed"] and rows[ids["in-refinement"]]["passed"]


def test_fields_and_selection(db, index, gsm8k_test):
    _, items = gsm8k_test
    ids = make_store(db, {"in-refinement": items[3][1], "other": "What is 2+2?"})
    with Store.open(db) as store:
        # the leaked text is in the prompt and, for this record, also in the refinement
        res = decontaminate(store, index, Selection(where="refinement LIKE 'We solve%'"),
                            fields=("refinement",))
        assert (res.selected, res.flagged) == (1, 1)
        detail = store.query("SELECT detail->>'field' FROM decisions WHERE record_id = ?",
                             [ids["in-refinement"]])
        assert detail == [("refinement",)]


def test_svamp_and_plain_file(db, tmp_path):
    svamp = shared_data("svamp", "SVAMP.json")
    name, items, _ = load_benchmark("svamp", str(svamp))
    assert name == "svamp" and items[0][0] == "chal-1" and len(items) == 1000
    idx = BenchmarkIndex.build(name, items, 8)
    assert idx.match(items[10][1].upper())[1]["item_id"] == items[10][0]
    own = tmp_path / "heldout.jsonl"
    own.write_text(json.dumps({"question": "A train leaves the station at 9 and travels "
                                           "for three hours at sixty miles per hour."}) + "\n")
    name, items, _ = load_benchmark(str(own), None)
    assert name == "heldout" and items[0][0] == "heldout-0"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"answer": 3}\n')
    with pytest.raises(CurationError, match="item 2 has none of the text fields"):
        load_benchmark(str(bad), None)


def test_errors_are_actionable(db):
    with pytest.raises(CurationError, match="needs --path"):
        load_benchmark("gsm8k-test", None)
    with pytest.raises(CurationError, match="not found"):
        load_benchmark("gsm8k-test", "/nonexistent/test.jsonl")
    with pytest.raises(CurationError, match="too small"):
        BenchmarkIndex.build("x", [("a", "b c d")], 1)
