"""Streaming import (issue 15, point 8): the column-wise fast path against the per-row reference.

The per-row path (pydantic ``PromptIn`` / ``RecordIn``) decides what is valid and words each
error; ``corpus.importbatch`` may only accept a batch the reference accepts, and must then
build identical rows. Checked on generated batches with the integrity suite's tricky values
(surrogates, control characters, non-finite and huge numbers, deep and odd meta), then end to
end: the same file gives identical stored rows, or the identical one-line error, either way,
in batches small enough that a file spans several; a failure in a late batch, or a SIGKILL
in the middle of the final insert, leaves nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from backends import file_store, store_examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus import Store, importers
from corpus.importbatch import (
    MISSING,
    Reject,
    _canonical,
    _encodable,
    arrow_columns,
    arrow_prompt_ids,
    arrow_record_ids,
    fast_prompt_columns,
    fast_prompts,
    fast_record_columns,
    fast_records,
    row_columns,
)
from corpus.importers import ImportInputError, import_prompts, import_records
from corpus.records import PROMPT_COLUMNS, arrow_rows, make_prompt
from schemas.identity import (
    canonical_json,
    canonical_json_tree,
    prompt_id,
    prompt_ids,
    record_id,
)
from schemas.records import check_json_value

_PROPS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow], deadline=None)
RUN = "r-test"
PATH = Path("in.jsonl")

any_text = st.text(st.characters(codec=None, categories=None), max_size=12)
texts = st.one_of(any_text, st.sampled_from(["What is 2+2?", "", " 7 ", "1,080", "27.0"]))
numbers = st.one_of(st.integers(min_value=-(10**20), max_value=10**20),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([True, 2**31 - 1, 2**31, -1, 0, 3.0]))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, any_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(any_text, inner, max_size=3)),
    max_leaves=8,
)
metas = st.one_of(st.none(), st.dictionaries(any_text, json_values, max_size=3),
                  st.sampled_from(['{"a": 1}', '{"a": NaN}', "{bad", "plain", "{}", '{"x": [1, 2.5]}']),
                  json_values)
optional_text = st.one_of(st.none(), texts, numbers)


# Well-typed rows: what real files mostly hold (the fast path must accept most batches of
# them, so the comparison is not vacuous); texts still carry surrogates and control chars.
finite = st.one_of(st.integers(min_value=-(10**20), max_value=10**20),
                   st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())
clean_values = st.recursive(finite | any_text,
                            lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(any_text, inner, max_size=3), max_leaves=8)
clean_meta = st.one_of(st.none(), st.dictionaries(any_text, clean_values, max_size=3),
                       st.dictionaries(any_text, clean_values, max_size=3).map(json.dumps))
opt = st.none() | texts


def _typed_record() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {"prompt": st.sampled_from(["p1", "p2 é\u2028", "p3\x00", " 7 "]) | any_text,
         "kind": st.sampled_from(["meta", "self", "qa"])},
        optional={"round": st.integers(0, 2**31 - 1) | st.sampled_from([2**31 - 1, 2**31, -1]),
                  "response": opt, "feedback": opt,
                  "refinement": opt, "verdict": st.sampled_from(["correct", "incorrect", None]),
                  "gold_answer": opt, "source": opt, "meta": clean_meta, "templates": clean_meta,
                  "responder": opt, "teacher": opt, "parent_record_id": opt,
                  "record_id": texts, "run_id": texts})


def _wild_record() -> st.SearchStrategy[dict]:
    prompts = st.sampled_from(["p1", "p2 é\u2028", "p3\x00"]) | texts
    return st.fixed_dictionaries(
        {"prompt": st.one_of(prompts, st.none(), numbers)},
        optional={"kind": st.sampled_from(["meta", "self", "qa", "META", None, 1]),
                  "round": st.one_of(st.integers(min_value=-2, max_value=2**31 + 1), numbers,
                                     st.none(), st.just("2")),
                  "response": optional_text, "feedback": optional_text,
                  "refinement": optional_text,
                  "verdict": st.sampled_from(["correct", "incorrect", None, "maybe", 1]),
                  "gold_answer": st.one_of(optional_text, st.sampled_from(["$5", "1e400", "nan"])),
                  "source": optional_text, "meta": metas, "templates": metas,
                  "responder": optional_text, "teacher": optional_text,
                  "parent_record_id": optional_text, "record_id": texts, "messages": json_values,
                  "unknown": texts})


def _record_rows() -> st.SearchStrategy[list[dict]]:
    return (st.lists(_typed_record(), min_size=1, max_size=6)
            | st.lists(_typed_record() | _wild_record(), min_size=1, max_size=6))


def _prompt_rows() -> st.SearchStrategy[list[dict]]:
    typed = st.fixed_dictionaries(
        {"text": st.sampled_from(["What is 2+2?", " q "]) | any_text},
        optional={"gold_answer": opt, "gold_rationale": opt, "source": opt, "split": opt,
                  "meta": clean_meta, "extra": clean_values,
                  "__split__": st.sampled_from(["train", "test"])})
    wild = st.fixed_dictionaries(
        {"text": st.one_of(texts, st.none(), numbers)},
        optional={"gold_answer": st.one_of(optional_text, st.sampled_from(["$5", "1e400"])),
                  "gold_rationale": optional_text, "source": optional_text,
                  "split": optional_text, "meta": metas, "extra": json_values,
                  "__split__": st.sampled_from(["train", "test"])})
    return (st.lists(typed, min_size=1, max_size=6)
            | st.lists(typed | wild, min_size=1, max_size=6))


def _reference(fn, *args, **kw):
    """The reference's tables, or its error message."""
    try:
        return fn(*args, **kw)
    except ImportInputError as exc:
        return str(exc)


def _copy(rows: list[dict]) -> list[tuple[str, dict]]:
    return [(f"line {i}", dict(r)) for i, r in enumerate(rows, start=1)]


@_PROPS
@given(rows=_record_rows(), source=st.sampled_from([None, "cli-src"]))
def test_fast_record_batches_equal_the_reference(rows, source):
    try:
        fast = fast_records(rows, source=source, default_source="in", run_id=RUN)
    except Reject:
        fast = None
    ref = _reference(importers.record_rows, PATH, _copy(rows), run_id=RUN, mapping={},
                     source=source, default_source=source or "in")
    if fast is not None:  # accepted: the reference accepts it too, with the same rows
        assert not isinstance(ref, str), ref
        assert fast[0].equals(ref["prompts"]) and fast[1].equals(ref["records"])


@_PROPS
@given(rows=_prompt_rows(), source=st.sampled_from([None, "cli-src"]),
       split=st.sampled_from([None, "train"]))
def test_fast_prompt_batches_equal_the_reference(rows, source, split):
    try:
        fast = fast_prompts(rows, source=source, split=split, default_source="in", run_id=RUN)
    except Reject:
        fast = None

    def reference():
        made = [make_prompt(**importers._prompt_fields(
            PATH, where, raw, preset=None, mapping={}, source=source, split=split,
            default_source="in")) for where, raw in _copy(rows)]
        return arrow_rows(made, PROMPT_COLUMNS, RUN)

    ref = _reference(reference)
    if fast is not None:
        assert not isinstance(ref, str), ref
        assert fast.equals(ref)


@_PROPS
@given(text=any_text, rows=st.lists(st.tuples(any_text, st.sampled_from(["meta", "self"]),
                                              st.integers(0, 2**31 - 1),
                                              st.none() | any_text), max_size=4))
def test_bulk_ids_equal_the_canonical_json_ids(text, rows):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return  # a lone surrogate never reaches hashing (refused on the way in)
    assert prompt_ids([text, text]) == [prompt_id(text)] * 2
    clean = [r for r in rows if all(x is None or _utf8(x) for x in (r[0], r[3]))]
    def col(values, type_=pa.string()):
        return pa.array(values, type_)

    got = arrow_record_ids(col([prompt_id(text)] * len(clean)), col([r[1] for r in clean]),
                           col([r[2] for r in clean], pa.int32()), col([r[0] for r in clean]),
                           col([r[3] for r in clean]), col([None] * len(clean)),
                           col([r[3] for r in clean]), col([r[0] for r in clean])).to_pylist()
    assert got == [record_id(prompt_id=prompt_id(text), kind=k, round=n, response=r,
                             feedback=f, verdict=None, refinement=f, parent_record_id=r)
                   for r, k, n, f in clean]


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- end to end: both paths, several batches per file --------------------------------------------


def _stored(store: Store) -> tuple:
    return (store.query("SELECT * EXCLUDE (run_id, created_at) FROM prompts ORDER BY prompt_id"),
            store.query("SELECT * EXCLUDE (run_id, created_at) FROM records ORDER BY record_id"))


def _outcome(tmp: Path, name: str, path: Path, fast: bool) -> object:
    with Store.open(tmp / f"{name}.duckdb") as store:
        try:
            import_records(store, path, fast=fast)
        except ImportInputError as exc:
            assert _stored(store) == ([], [])  # nothing of a refused file landed
            return str(exc)
        return _stored(store)


@settings(_PROPS, max_examples=store_examples())
@given(rows=_record_rows(), fmt=st.sampled_from(["jsonl", "parquet"]),
       garbage_at=st.one_of(st.none(), st.integers(0, 6)))
def test_both_paths_store_the_same_rows_or_refuse_with_the_same_line(monkeypatch, rows, fmt,
                                                                      garbage_at):
    monkeypatch.setattr(importers, "BATCH_ROWS", 2)  # a file spans several batches
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = tmp / f"in.{fmt}"
        if fmt == "jsonl":
            lines = [json.dumps(r) for r in rows]
            if garbage_at is not None:  # a malformed line after (or before) a bad row
                lines.insert(min(garbage_at, len(lines)), "{not json")
            path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
        else:
            try:
                table = pa.Table.from_pylist([{k: json.dumps(v) for k, v in r.items()}
                                              for r in rows])
                pq.write_table(table, path)
            except (pa.ArrowException, UnicodeEncodeError):
                return
        fast = _outcome(tmp, "fast", path, True)
        reference = _outcome(tmp, "ref", path, False)
        assert fast == reference


def test_a_bad_row_in_a_late_batch_lands_nothing(db, tmp_path, monkeypatch):
    monkeypatch.setattr(importers, "BATCH_ROWS", 3)
    rows = [{"prompt": f"q{i}", "kind": "qa", "response": str(i)} for i in range(10)]
    rows[8]["round"] = -1
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with Store.open(db) as store:
        with pytest.raises(ImportInputError, match=r"r.jsonl: line 9: field 'round'"):
            import_records(store, f)
        assert _stored(store) == ([], [])
        del rows[8]["round"]
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        res = import_records(store, f)
        assert (res.new_prompts, res.new_records) == (10, 10)
        assert import_records(store, f).new_records == 0


def test_the_first_row_of_an_id_wins_across_batches(db, tmp_path, monkeypatch):
    monkeypatch.setattr(importers, "BATCH_ROWS", 2)
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"text": t, "gold_answer": g}) + "\n"
                         for t, g in [("a", "1"), ("b", "2"), ("a", "3"), ("a", "4")]))
    with Store.open(db) as store:
        assert import_prompts(store, f).new_prompts == 2
        assert store.query("SELECT gold_answer FROM prompts WHERE text = 'a'") == [("1",)]


_KILLER = """
import os, signal, sys
from corpus import importers, inserts
from corpus.store import Store
importers.BATCH_ROWS = 2
real, calls = inserts.RowGroupInserter._insert, []
def insert(self, n):
    calls.append(self._table)
    if len(calls) == 2:  # inside the import's transaction, after the prompts went in
        assert calls == ["prompts", "records"]
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, n)
inserts.RowGroupInserter._insert = insert
with Store.open(sys.argv[1]) as store:
    importers.import_records(store, sys.argv[2])
"""


@file_store("kill -9 of a file writer (of a lake writer: test_lake_faults)")
def test_sigkill_in_the_final_insert_leaves_nothing(db, tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"q{i}", "kind": "qa", "response": str(i)}) + "\n"
                         for i in range(9)))
    env = os.environ | {"TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", _KILLER, db, str(f)], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL
    with Store.open(db) as store:  # the next writer reaps the killed run
        assert _stored(store) == ([], [])
        assert store.query("SELECT status FROM runs WHERE command = 'records import'") == [
            ("killed",)]


# -- the columnar fast path: Arrow batches, one json.dumps per meta ------------------------------


def _arrow(rows: list[dict]) -> pa.Table | None:
    """The rows as Arrow infers them (what a Parquet file of them holds), or None."""
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowException, UnicodeEncodeError, OverflowError):
        return None


@_PROPS
@given(rows=st.lists(_typed_record(), min_size=1, max_size=6),
       source=st.sampled_from([None, "cli-src"]))
def test_arrow_record_batches_equal_the_reference(rows, source):
    table = _arrow(rows)
    if table is None:
        return
    chunk = importers.Chunk(batch=table.to_batches()[0])
    try:
        fast = fast_record_columns(arrow_columns(table), table.num_rows, source=source,
                                   default_source="in", run_id=RUN)
    except Reject:
        fast = None
    ref = _reference(importers.record_rows, PATH, chunk.rows(), run_id=RUN, mapping={},
                     source=source, default_source=source or "in")
    if fast is not None:
        assert not isinstance(ref, str), ref
        assert fast[0].equals(ref["prompts"]) and fast[1].equals(ref["records"])


@_PROPS
@given(rows=st.lists(st.fixed_dictionaries(
    {"text": st.sampled_from(["What is 2+2?", " q "]) | any_text},
    optional={"gold_answer": opt, "gold_rationale": opt, "source": opt, "split": opt,
              "meta": clean_meta, "extra": clean_values}), min_size=1, max_size=6))
def test_arrow_prompt_batches_equal_the_reference(rows):
    table = _arrow(rows)
    if table is None:
        return
    try:
        fast = fast_prompt_columns(arrow_columns(table), table.num_rows, source=None,
                                   split=None, default_source="in", run_id=RUN)
    except Reject:
        fast = None

    def reference():
        made = [make_prompt(**importers._prompt_fields(
            PATH, f"row {i}", raw, preset=None, mapping={}, source=None, split=None,
            default_source="in")) for i, raw in enumerate(table.to_pylist(), start=1)]
        return arrow_rows(made, PROMPT_COLUMNS, RUN)

    ref = _reference(reference)
    if fast is not None:
        assert not isinstance(ref, str), ref
        assert fast.equals(ref)


def _nested(depth: int, leaf: object) -> object:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@_PROPS
@given(meta=st.one_of(
    st.dictionaries(any_text, json_values, max_size=4),
    st.dictionaries(st.one_of(st.integers(), st.booleans(), st.none(), any_text), finite,
                    max_size=3),
    st.builds(lambda d, leaf: {"a": _nested(d, leaf)}, st.integers(55, 70), finite | any_text),
    st.builds(lambda d: {"a": [[[[]]]] * d}, st.integers(10, 30))))
def test_the_one_dumps_meta_check_accepts_only_what_the_walk_accepts(meta):
    try:
        text = _canonical(meta, "meta")
        _encodable([text])
    except Reject:
        return  # refusing is always allowed: the reference then reads the batch
    check_json_value(meta, "meta")  # accepted: the exact walk accepts it too …
    assert text == canonical_json(meta)  # … and the stored text is the reference's


def test_a_typed_parquet_file_is_read_by_the_fast_path_only(db, tmp_path, monkeypatch):
    rows = [{"prompt": f"q{i // 2} é\n\"x\"", "kind": ["meta", "self", "qa"][i % 3],
             "round": i % 3, "response": f"r{i}\x01", "feedback": None if i % 3 else f"f{i}",
             "verdict": [None, "correct", "incorrect"][i % 3], "gold_answer": f"{i},000",
             "meta": {"i": i, "tag": "t\u2028", "xs": [1.5, None, True]}}
            for i in range(30)]
    f = tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    monkeypatch.setattr(importers, "BATCH_ROWS", 7)
    with Store.open(tmp_path / "ref.duckdb") as store:
        import_records(store, f, fast=False)
        reference = _stored(store)

    def no_reference(*args, **kw):
        raise AssertionError("the reference read a batch of a clean file")

    monkeypatch.setattr(importers, "record_rows", no_reference)
    with Store.open(db) as store:
        res = import_records(store, f)
        assert (res.rows, res.new_records, res.new_prompts) == (30, 30, 15)
        assert _stored(store) == reference


@_PROPS
@given(value=st.one_of(st.dictionaries(any_text, json_values, max_size=4),
                       st.lists(json_values, max_size=4)))
def test_the_tree_encoder_writes_what_canonical_json_writes(value):
    try:
        expected = canonical_json(value, allow_nan=False)
    except ValueError:  # NaN or an infinity: refused by both
        with pytest.raises(ValueError):
            canonical_json_tree(value)
        return
    assert canonical_json_tree(value) == expected
    assert expected == json.dumps(value, sort_keys=True, ensure_ascii=False,
                                  separators=(",", ":"))


utf8_text = any_text.filter(_utf8)


@_PROPS
@given(rows=st.lists(st.tuples(
    st.sampled_from(["p1", "p2"]) | utf8_text, st.sampled_from(["meta", "self", "qa"]),
    st.integers(0, 2**31 - 1), *[st.none() | utf8_text] * 3,
    st.sampled_from(["correct", "incorrect", None]), st.none() | utf8_text), max_size=8))
def test_bulk_record_ids_are_byte_identical_to_record_id(rows):
    pids = arrow_prompt_ids(pa.array([r[0] for r in rows], pa.string()))
    cols = [pa.array([r[i] for r in rows], pa.int32() if i == 2 else pa.string())
            for i in range(1, 8)]
    got = arrow_record_ids(pids, cols[0], cols[1], cols[2], cols[3], cols[5], cols[4],
                           cols[6]).to_pylist()
    assert got == [record_id(prompt_id=prompt_id(p), kind=k, round=n, response=r, feedback=f,
                             verdict=v, refinement=rf, parent_record_id=pa)
                   for p, k, n, r, f, rf, v, pa in rows]


@_PROPS
@given(rows=st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values, max_size=3),
                     max_size=5))
def test_row_columns_hold_every_key_and_missing_where_a_row_lacks_it(rows):
    cols = row_columns(rows)
    keys = {k for r in rows for k in r}
    assert set(cols) == keys
    for k in keys:
        got = cols[k]
        assert len(got) == len(rows)
        assert all((got[i] is MISSING) if k not in r else (got[i] is r[k])
                   for i, r in enumerate(rows))


def test_the_first_row_of_an_id_wins_across_staged_parts(db, tmp_path, monkeypatch):
    monkeypatch.setattr(importers, "BATCH_ROWS", 2)
    monkeypatch.setattr(importers, "PART_BATCHES", 1)  # every 2 rows a part, one INSERT each
    f = tmp_path / "r.jsonl"
    rows = [("a", "1"), ("b", "2"), ("c", "3"), ("a", "4"), ("a", "5"), ("b", "6")]
    f.write_text("".join(json.dumps({"prompt": p, "kind": "qa", "gold_answer": g,
                                     "source": f"s{g}"}) + "\n" for p, g in rows))
    with Store.open(db) as store:
        res = import_records(store, f)
        assert (res.new_prompts, res.new_records) == (3, 3)
        assert store.query("SELECT text, gold_answer, source FROM prompts ORDER BY text") == [
            ("a", "1", "s1"), ("b", "2", "s2"), ("c", "3", "s3")]
        assert store.query("SELECT source FROM records ORDER BY source") == [
            ("s1",), ("s2",), ("s3",)]


def test_reading_a_parquet_file_holds_about_one_row_group_not_the_file(tmp_path, monkeypatch):
    """A Parquet file is read row group by row group without keeping what was read: Arrow's
    allocations while reading 40 row groups of incompressible text stay a small part of the
    file (pyarrow's pre-buffering kept every row group read until the file was closed: 229
    MB of Arrow memory after 2.5M of 3M bench records)."""
    path = tmp_path / "big.parquet"
    group = 2_000
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())]),
                          compression="zstd") as writer:
        for _ in range(40):
            writer.write_table(pa.table({"text": [os.urandom(500).hex() for _ in range(group)]}))
    monkeypatch.setattr(importers, "BATCH_BYTES", 1 << 20)  # batches of 1 MB: small beside it
    size = path.stat().st_size
    assert size > 30e6  # hex of random bytes: it compresses only to half
    base, held = pa.total_allocated_bytes(), 0
    for batch in importers._parquet_batches(path):
        held = max(held, pa.total_allocated_bytes() - base)
        del batch
    assert 0 < held < size / 4, (held, size)
