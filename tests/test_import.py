"""Importing prompts and records: formats, --map, presets, atomicity, bad input, SIGKILL."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from backends import both_stores, file_store
from children import child
from conftest import shared_data

from corpus import Store
from corpus.importers import ImportInputError, import_prompts, import_records
from corpus.presets import canonical_answer, load_benchmark_items, parse_gsm8k_answer

# Project-written rows in the benchmarks' formats (never benchmark text).
GSM8K_ROWS = [
    {"question": "Tom has 3 boxes of 360 pens. How many pens does he have?",
     "answer": "He has 3 * 360 = <<3*360=1080>>1080 pens.\n#### 1,080"},
    {"question": "Ann reads 4 pages a day for 5 days. How many pages?",
     "answer": "She reads 4 * 5 = <<4*5=20>>20 pages.\n#### 20"},
]
SVAMP_ROWS = [
    {"ID": "t-1", "Body": "Sam had 30 apples and gave away 3", "Question": "How many are left?",
     "Equation": "( 30.0 - 3.0 )", "Answer": 27.0, "Type": "Subtraction"},
    {"ID": "t-2", "Body": "A rope is 5 m long and is cut in 2 equal parts.",
     "Question": "How long is each part?", "Equation": "( 5.0 / 2.0 )", "Answer": 2.5,
     "Type": "Common-Division"},
]
RECORDS = [
    {"prompt": "What is 2 + 3?", "response": "6", "feedback": "2 + 3 = 5. Verdict: incorrect",
     "verdict": "incorrect", "refinement": "2 + 3 = 5.\n#### 5", "kind": "meta",
     "gold_answer": "5", "meta": {"teacher_note": "x"}},
    {"prompt": "What is 2 + 3?", "response": "5", "feedback": "Right. Verdict: correct",
     "verdict": "correct", "refinement": "5", "kind": "self", "round": 1},
    {"prompt": "What is 10 / 4?", "response": "2.5", "kind": "qa", "gold_answer": 2.5},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def count(db: str, table: str) -> int:
    return Store.open_readonly(db).query(f"SELECT count(*) FROM {table}")[0][0]


# -- formats and mapping -------------------------------------------------------------------


@both_stores
def test_jsonl_with_map_lands_once_and_records_its_run(cli, db, tmp_path):
    f = write_jsonl(tmp_path / "qs.jsonl", [
        {"question": "How many legs do 3 cats have?", "answer": "12", "difficulty": "easy"},
        {"question": "What is 7 * 6?", "answer": 42},
    ])
    out = cli("prompts", "import", str(f), "--db", db, "--map",
              "question=text,answer=gold_answer,difficulty=meta.level", "--split", "train").output
    [line] = out.strip().splitlines()  # the summary line alone: no bar off a terminal
    assert line.startswith(f"2 prompts read from {f}: 2 new (run r")
    assert "0 new" in cli("prompts", "import", str(f), "--db", db, "--map",
                          "question=text,answer=gold_answer,difficulty=meta.level",
                          "--split", "train").output
    rows = Store.open_readonly(db).query_dicts(
        "SELECT text, gold_answer, source, split, meta FROM prompts ORDER BY text")
    assert rows[0] == {"text": "How many legs do 3 cats have?", "gold_answer": "12",
                       "source": "qs", "split": "train", "meta": '{"level":"easy"}'}
    assert rows[1]["gold_answer"] == "42" and rows[1]["meta"] is None
    runs = Store.open_readonly(db).query_dicts(
        "SELECT command, status, config, counts FROM runs ORDER BY started_at")
    assert [r["command"] for r in runs] == ["prompts import", "prompts import"]
    config = json.loads(runs[0]["config"])
    assert config["map"]["question"] == "text" and config["split"] == "train"
    assert len(config["sha256"]) == 64
    assert json.loads(runs[1]["counts"]) == {"prompts": 0, "rows": 2}


@both_stores
def test_csv_empty_cells_are_null_and_extra_columns_go_to_meta(cli, db, tmp_path):
    f = tmp_path / "qs.csv"
    with open(f, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "gold_answer", "topic"])
        w.writerow(["Add 2 and 2, please?", "4", "sums"])
        w.writerow(["Multi\nline question?", "", "misc"])
    cli("prompts", "import", str(f), "--db", db, "--source", "mine")
    rows = Store.open_readonly(db).query_dicts(
        "SELECT text, gold_answer, source, meta FROM prompts ORDER BY text")
    assert rows[0] == {"text": "Add 2 and 2, please?", "gold_answer": "4", "source": "mine",
                       "meta": '{"topic":"sums"}'}
    assert rows[1]["text"] == "Multi\nline question?" and rows[1]["gold_answer"] is None


def test_parquet_and_saved_hf_dataset(cli, db, tmp_path):
    datasets = pytest.importorskip("datasets")
    pq.write_table(pa.table({"q": ["P one?", "P two?"], "a": ["1", "2"]}), tmp_path / "p.parquet")
    cli("prompts", "import", str(tmp_path / "p.parquet"), "--db", db, "--map", "q=text,a=gold_answer")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["H one?", "H two?"], "gold_answer": ["1", "2"]}),
        "test": datasets.Dataset.from_dict({"text": ["H three?"], "gold_answer": ["3"]}),
    })
    dd.save_to_disk(str(tmp_path / "hfdir"))
    cli("prompts", "import", str(tmp_path / "hfdir"), "--db", db)
    got = Store.open_readonly(db).query("SELECT text, gold_answer, split FROM prompts ORDER BY text")
    assert got == [("H one?", "1", "train"), ("H three?", "3", "test"), ("H two?", "2", "train"),
                   ("P one?", "1", None), ("P two?", "2", None)]


# -- presets -------------------------------------------------------------------------------


def test_gsm8k_preset_takes_number_after_hashes_and_strips_calculator_notes(cli, db, tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS)
    cli("prompts", "import", str(f), "--db", db, "--preset", "gsm8k")
    rows = Store.open_readonly(db).query_dicts(
        "SELECT gold_answer, gold_rationale, source, split, meta FROM prompts "
        "ORDER BY gold_answer")
    meta = json.loads(rows[0].pop("meta"))
    assert rows[0] == {"gold_answer": "1080", "source": "gsm8k", "split": "train",
                       "gold_rationale": "He has 3 * 360 = 1080 pens.\n#### 1,080"}
    assert rows[1]["gold_answer"] == "20"
    # The annotations the rationale loses are kept for the verifying teacher.
    assert meta == {"annotated_rationale": GSM8K_ROWS[0]["answer"]}


def test_svamp_preset_joins_body_and_question_and_keeps_equation(cli, db, tmp_path):
    f = tmp_path / "SVAMP.json"
    f.write_text(json.dumps(SVAMP_ROWS))
    cli("prompts", "import", str(f), "--db", db, "--preset", "svamp")
    rows = Store.open_readonly(db).query_dicts(
        "SELECT text, gold_answer, meta, split FROM prompts ORDER BY gold_answer DESC")
    assert rows[0]["text"] == "Sam had 30 apples and gave away 3 How many are left?"
    assert rows[0]["gold_answer"] == "27" and rows[1]["gold_answer"] == "2.5"
    assert json.loads(rows[0]["meta"]) == {"id": "t-1", "equation": "( 30.0 - 3.0 )",
                                           "type": "Subtraction"}
    assert rows[0]["split"] == "test"


def test_load_benchmark_items_on_the_real_files():
    g = load_benchmark_items(shared_data("gsm8k", "test.jsonl"), "gsm8k")
    assert len(g) == 1319 and g[0]["item_id"] == "test-0" and g[0]["gold_answer"] == "18"
    assert all("<<" not in i["gold_rationale"] for i in g)
    assert all(i["gold_answer"].lstrip("-").replace(".", "", 1).isdigit() for i in g)
    s = load_benchmark_items(shared_data("svamp", "SVAMP.json"), "svamp")
    assert len(s) == 1000 and s[0]["item_id"] == "chal-1"
    assert all(not i["gold_answer"].endswith(".0") for i in s)
    assert s[0]["text"].startswith(s[0]["meta"]["id"] and "Each pack")
    assert len({i["item_id"] for i in s}) == 1000


@pytest.mark.parametrize("raw, canon", [
    (27.0, "27"), ("1,080", "1080"), ("2.50", "2.5"), (-3, "-3"), ("$5", "5"), ("abc", "abc"),
])
def test_canonical_answer(raw, canon):
    assert canonical_answer(raw) == canon


def test_parse_gsm8k_answer_requires_hashes():
    with pytest.raises(ValueError, match="####"):
        parse_gsm8k_answer("no final line")


@both_stores
def test_prompts_generate_is_idempotent(cli, db):
    assert "50 new" in cli("prompts", "generate", "--n", "50", "--seed", "2", "--db", db).output
    assert "0 new" in cli("prompts", "generate", "--n", "50", "--seed", "2", "--db", db).output
    rows = Store.open_readonly(db).query(
        "SELECT count(*), count(DISTINCT source), min(source), count(gold_rationale) FROM prompts")
    assert rows == [(50, 1, "generated", 50)]


# -- records -------------------------------------------------------------------------------


@both_stores
def test_records_import_creates_prompts_and_is_idempotent(cli, db, tmp_path):
    f = write_jsonl(tmp_path / "meta.jsonl", RECORDS)
    out = cli("records", "import", str(f), "--db", db).output
    assert "3 new records, 2 new prompts" in out
    assert "0 new records, 0 new prompts" in cli("records", "import", str(f), "--db", db).output
    store = Store.open_readonly(db)
    rows = store.query_dicts(
        "SELECT kind, round, verdict, prompt, gold_answer, source, r.meta FROM records_full r "
        "ORDER BY kind")
    assert [(r["kind"], r["round"], r["verdict"]) for r in rows] == [
        ("meta", 0, "incorrect"), ("qa", 0, None), ("self", 1, "correct")]
    assert rows[0]["gold_answer"] == "5" and rows[0]["source"] == "meta"
    assert json.loads(rows[0]["meta"]) == {"teacher_note": "x"}
    assert rows[1]["gold_answer"] == "2.5"
    # Every row belongs to the one run of the first import.
    assert store.query("SELECT count(DISTINCT run_id) FROM records") == [(1,)]
    assert store.query("SELECT count(*) FROM runs WHERE command = 'records import'") == [(2,)]


@both_stores
def test_records_import_from_parquet(db, tmp_path):
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "meta"}
                                         for r in RECORDS[:2]]), tmp_path / "r.parquet")
    with Store.open(db) as store:
        res = import_records(store, tmp_path / "r.parquet", source="elsewhere")
    assert (res.rows, res.new_records, res.new_prompts) == (2, 2, 1)
    assert Store.open_readonly(db).query("SELECT DISTINCT source FROM records") == [("elsewhere",)]


# -- bad input ----------------------------------------------------------------------------

GOOD = {"text": "What is one plus one?", "gold_answer": "2"}


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    def lines(name: str, *content: bytes) -> Path:
        p = tmp_path / name
        p.write_bytes(b"".join(c + b"\n" for c in content))
        return p

    good = json.dumps(GOOD).encode()
    other = json.dumps({"text": "Another question?"}).encode()
    return {
        "malformed": (lines("malformed.jsonl", good, other, b'{"text": "oops",'),
                      ["malformed.jsonl", "line 3", "malformed JSON"]),
        "wrong-type": (lines("wrong.jsonl", good, json.dumps({"text": 5}).encode()),
                       ["wrong.jsonl", "line 2", "field 'text'", "int"]),
        "missing": (lines("missing.jsonl", json.dumps({"question": "Q?"}).encode()),
                    ["missing.jsonl", "line 1", "field 'text'", "question"]),
        "non-utf8": (lines("latin.jsonl", good, '{"text": "caf\u00e9?"}'.encode("latin-1")),
                     ["latin.jsonl", "line 2", "UTF-8", "0xe9"]),
        "empty": (lines("empty.jsonl"), ["empty.jsonl", "empty"]),
    }


@pytest.mark.parametrize("case", ["malformed", "wrong-type", "missing", "non-utf8", "empty"])
def test_bad_prompt_file_fails_with_location_and_leaves_nothing(cli, db, tmp_path, case):
    path, expected = _bad_files(tmp_path)[case]
    out = cli("prompts", "import", str(path), "--db", db, exit_code=1).output
    error = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, out
    for part in expected:
        assert part in error[0], error[0]
    assert count(db, "prompts") == 0
    assert Store.open_readonly(db).query("SELECT status FROM runs") == [("failed",)]


@pytest.mark.parametrize("row, parts", [
    ({"prompt": "Q?", "kind": "meta", "verdict": "maybe"}, ["field 'verdict'", "line 2"]),
    ({"prompt": "Q?"}, ["field 'kind'", "missing"]),
    ({"prompt": "Q?", "kind": "qa", "round": -1}, ["field 'round'"]),
    ({"prompt": "Q?", "kind": "qa", "colour": "red"}, ["field 'colour'", "--map"]),
])
def test_bad_record_rows_are_refused(cli, db, tmp_path, row, parts):
    f = write_jsonl(tmp_path / "recs.jsonl", [RECORDS[0], row])
    out = cli("records", "import", str(f), "--db", db, exit_code=1).output
    for part in parts + ["recs.jsonl"]:
        assert part in out, out
    assert count(db, "records") == 0 and count(db, "prompts") == 0


def test_library_error_type_and_csv_non_utf8(db, tmp_path):
    f = tmp_path / "bad.csv"
    f.write_bytes(b"text,gold_answer\nfine?,1\nna\xefve?,2\n")
    with Store.open(db) as store, pytest.raises(ImportInputError, match=r"bad.csv: line 3"):
        import_prompts(store, f)


# -- progress ------------------------------------------------------------------------------


def test_import_draws_rows_read_then_written_on_a_terminal(db, tmp_path, tty):
    from corpus.display import progress
    n = 2_007
    f = write_jsonl(tmp_path / "many.jsonl", [{"text": f"Question {i}?"} for i in range(n)])
    with Store.open(db) as store, progress("import", console=tty) as bar:
        res = import_prompts(store, f, progress=bar)
    drawn = tty.file.getvalue()
    assert res.new_prompts == n
    assert "write many.jsonl" in drawn and f"{n}/{n}" in drawn and "rows written" in drawn
    with Store.open(db) as store, progress("import", console=tty) as bar:
        import_records(store, write_jsonl(tmp_path / "recs.jsonl", RECORDS), progress=bar)
    assert "write recs.jsonl" in tty.file.getvalue()


# -- SIGKILL mid-import --------------------------------------------------------------------

KILLED_IMPORT = """
import os, signal, sys
from corpus import inserts
from selfevo.cli import main

real_close = inserts.RowGroupInserter.close

def insert_then_die(self):
    # The kill lands after the rows are inserted and before the transaction commits: the
    # worst moment, and one no longer left to how fast the machine writes.
    real_close(self)
    os.kill(os.getpid(), signal.SIGKILL)

inserts.RowGroupInserter.close = insert_then_die
sys.argv = ["selfevo", "prompts", "import", sys.argv[1], "--db", sys.argv[2]]
main()
"""


@file_store("kill -9 of a file writer (of a lake writer: test_lake_faults)")
def test_sigkill_mid_import_leaves_store_openable_and_empty(db, tmp_path):
    big = tmp_path / "big.jsonl"
    with open(big, "w", encoding="utf-8") as fh:
        for i in range(150_000):
            fh.write(json.dumps({"text": f"Synthetic question number {i}?", "gold_answer": str(i)}))
            fh.write("\n")
    Store.open(db).close()
    with child([sys.executable, "-c", KILLED_IMPORT, str(big), db], stderr=subprocess.PIPE,
               cwd=Path(__file__).parent.parent) as proc:
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"the import was not killed: {err[-500:]!r}"
    with Store.open(db) as store:
        assert store.query("SELECT count(*) FROM prompts") == [(0,)]
        assert store.query("SELECT command, status FROM runs") == [("prompts import", "killed")]


@both_stores
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_an_export_imports_back_with_the_same_record_ids(db, tmp_path, fmt):
    from corpus.export import export_snapshot
    from corpus.snapshots import create_snapshot

    with Store.open(db) as store:
        import_records(store, write_jsonl(tmp_path / "meta.jsonl", RECORDS))
        create_snapshot(store, "all", "true")
        export_snapshot(store, "all", fmt, tmp_path / "out")
    other = str(tmp_path / "other.duckdb")
    with Store.open(other) as store:
        res = import_records(store, tmp_path / "out" / f"records.{fmt}")
    assert (res.rows, res.new_records, res.new_prompts) == (3, 3, 2)
    ids = "SELECT record_id, prompt_id, verdict, meta FROM records ORDER BY record_id"
    assert Store.open_readonly(other).query(ids) == Store.open_readonly(db).query(ids)


def test_hf_load_dataset_from_a_local_folder(cli, db, tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "hubish"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", GSM8K_ROWS)
    write_jsonl(folder / "test.jsonl", GSM8K_ROWS[:1])
    cli("prompts", "import", "--hf", str(folder), "--preset", "gsm8k", "--db", db)
    rows = Store.open_readonly(db).query(
        "SELECT split, gold_answer, source FROM prompts ORDER BY split, gold_answer")
    # Same text in both splits is one prompt (identity is the text); it keeps its first split.
    assert sorted(r[1] for r in rows) == ["1080", "20"] and rows[0][2] == "gsm8k"
    out = cli("prompts", "import", "--hf", str(folder), "--split", "test", "--preset", "gsm8k",
              "--db", db).output
    assert "1 prompts read" in out and "0 new" in out
    assert "exactly one" in cli("prompts", "import", "--db", db, exit_code=2).output
    assert "cannot load" in cli("prompts", "import", "--hf", str(tmp_path / "none"), "--db", db,
                                exit_code=1).output


@pytest.mark.parametrize("row, parts", [
    ({"question": "Q?", "answer": "no final line"}, ["line 2", "field 'answer'", "####"]),
    ({"question": "Q?"}, ["line 2", "field 'answer'", "--preset gsm8k", "missing"]),
    ({"question": 7, "answer": "#### 7"}, ["line 2", "field 'question'", "int"]),
])
def test_preset_errors_name_the_benchmark_field(cli, db, tmp_path, row, parts):
    f = write_jsonl(tmp_path / "train.jsonl", [GSM8K_ROWS[0], row])
    out = cli("prompts", "import", str(f), "--preset", "gsm8k", "--db", db, exit_code=1).output
    for part in parts:
        assert part in out, out
    assert count(db, "prompts") == 0
