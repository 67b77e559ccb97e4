"""JSONL through pyarrow (``corpus.jsonlarrow``): a batch it vouches for holds exactly the
rows ``json.loads`` reads line by line, and an import gives the same store either way.

The inputs are generated to hit every difference found between the two readers: numbers
that pyarrow widens (``1`` with ``1.5``, integers past 64 bits), texts it would take as
timestamps, objects missing a key, lists, nesting, raw control characters, duplicate keys,
lone surrogates, two objects on a line, blank and ``null`` lines, deep nesting.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from backends import store_examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus import Store
from corpus.importers import ImportInputError, import_records
from corpus.jsonlarrow import arrow_batch, lines_of

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | \
    st.sampled_from(["2020-01-01", "2020-01-01T00:00:00", "\t", "a\u2028b", "😀", "\x00"])
SCALAR = st.one_of(TEXT, st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                   st.booleans(), st.none())
VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from("xyz"), inner, max_size=3), max_leaves=6)
ROW = st.dictionaries(st.sampled_from(["prompt", "response", "kind", "round", "meta", "n"]),
                      VALUE, max_size=5)
# Lines written by hand: what json.dumps never writes.
ODD = st.sampled_from([
    '{"a": 1, "a": 2}', '{"a": "\\ud800"}', '{"a": "\\ud83d\\ude00"}', '{"a": 1}{"a": 2}',
    "", "   ", "null", "[1]", "5", '{"a": "x\ty"}', '{"a": 1}\r', '\ufeff{"a": 1}',
    '{"m": {"x": 1}}', '{"m": {}}', '{"a": NaN}', '{"a": 1e400}', '{"a": -0}',
    "{" * 300 + "}" * 300, '{"a": ' + "[" * 400 + "]" * 400 + "}", '{"a": 1,}',
])
LINE = st.one_of(ROW.map(lambda r: json.dumps(r, ensure_ascii=False)),
                 ROW.map(json.dumps), ODD)


def _strict(value):
    """A value as canonical JSON text: True and 1, 1 and 1.0 differ."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINE | st.sampled_from(["\r", "{}\r"]), min_size=1, max_size=8))
def test_a_vouched_batch_holds_exactly_the_rows_json_loads_reads(lines):
    block = "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass")
    raw = lines_of(block)
    batch = arrow_batch(block)
    if batch is None:
        return
    for got, line in zip(batch.to_pylist(), raw, strict=True):
        want = json.loads(line)
        # A key missing at the top and a top-level null mean the same to the importer.
        got = {k: v for k, v in got.items() if v is not None}
        want = {k: v for k, v in want.items() if v is not None}
        assert _strict(got) == _strict(want), line


def test_the_plain_records_of_a_corpus_are_vouched_for():
    """The fast path is taken for what corpora hold: texts, integers, flat meta objects."""
    rows = [{"prompt": f"q{i}", "response": "r\u00e9 \"quoted\" \\ 😀", "kind": "meta",
             "round": i, "meta": {"i": i, "template": "t", "ok": True}} for i in range(5)]
    block = "".join(json.dumps(r) + "\n" for r in rows).encode()
    batch = arrow_batch(block)
    assert batch is not None and batch.to_pylist() == rows


RECORD = st.fixed_dictionaries(
    {"prompt": st.sampled_from(["What is 2 + 3?", "Say \"hi\"\n", "é😀"])},
    optional={"response": TEXT, "feedback": TEXT, "verdict": st.sampled_from(
        ["correct", "incorrect", None, "maybe"]), "kind": st.sampled_from(["meta", "qa", "x"]),
        "round": st.one_of(st.integers(0, 3), st.none(), st.floats(0, 2)),
        "gold_answer": st.one_of(st.integers(-5, 5), TEXT), "meta": VALUE})


def _store_rows(db: str) -> tuple[list, list]:
    with Store.open_readonly(db) as store:
        return (store.query("SELECT * EXCLUDE (run_id, created_at) FROM prompts ORDER BY 1"),
                store.query("SELECT * EXCLUDE (run_id, created_at) FROM records ORDER BY 1"))


def _import(db: str, path: Path, fast: bool) -> tuple[str, tuple[list, list]]:
    with Store.open(db) as store:
        try:
            import_records(store, path, fast=fast)
            error = ""
        except ImportInputError as exc:
            error = str(exc)
    return error, _store_rows(db)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow],
          max_examples=store_examples())
@given(rows=st.lists(st.one_of(RECORD.map(json.dumps), ODD), min_size=1, max_size=6))
def test_an_import_stores_the_same_through_pyarrow_as_through_the_reference(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.jsonl"
        path.write_bytes("".join(r + "\n" for r in rows).encode("utf-8", "surrogatepass"))
        fast = _import(str(Path(tmp) / "fast.duckdb"), path, fast=True)
        reference = _import(str(Path(tmp) / "ref.duckdb"), path, fast=False)
    assert fast == reference


@given(lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=40),
       last_newline=st.booleans(), rows=st.integers(1, 5), size=st.integers(1, 64))
def test_jsonl_blocks_cut_the_file_into_whole_lines_of_at_most_batch_rows(
        lines, last_newline, rows, size):
    import io as _io

    from corpus import importers

    data = b"\n".join(lines) + (b"\n" if last_newline and lines else b"")
    saved = importers.BATCH_ROWS, importers.BATCH_BYTES
    importers.BATCH_ROWS, importers.BATCH_BYTES = rows, size
    try:
        blocks = list(importers._jsonl_blocks(_io.BytesIO(data)))
    finally:
        importers.BATCH_ROWS, importers.BATCH_BYTES = saved
    assert b"".join(blocks) == data
    assert all(b for b in blocks)
    assert all(b.endswith(b"\n") for b in blocks[:-1])
    assert all(len(lines_of(b)) <= rows for b in blocks)
