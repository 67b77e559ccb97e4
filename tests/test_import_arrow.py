"""The Arrow path of the streaming import (issue 15, point 8): checks, canonical JSON and ids
computed over whole Arrow arrays must give exactly what the reference gives.

Generated inputs carry what breaks hand-written JSON: quotes, backslashes, every control
character, U+2028, non-BMP characters, empty texts, nested and odd meta. Ids are compared
byte for byte with ``schemas.identity`` (the reference id functions), meta with
``canonical_json`` of what Arrow holds, and whole batches with the per-row reference.
"""

from __future__ import annotations

from json.encoder import encode_basestring as _json_text

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st
from test_import_stream import _PROPS, PATH, RUN, _arrow, _record_rows, _typed_record

from corpus import importers
from corpus.importbatch import (
    Reject,
    _canonical,
    _json_dict,
    arrow_canonical,
    arrow_prompt_ids,
    arrow_record_ids,
    fast_record_arrow,
    json_quoted,
)
from schemas.identity import canonical_json, prompt_id, record_id

# Texts that need every kind of JSON escape, as well as plain ones.
_ESCAPY = st.sampled_from(['"', "\\", "\n", "\r", "\t", "\b", "\f", "\x00", "\x1f", "\x7f",
                           "\u2028", "é", "😀", "/", "\\u0041", ""])
utf8_text = st.text(st.characters(codec="utf-8"), max_size=10) | st.lists(
    _ESCAPY | st.text(st.characters(codec="utf-8"), max_size=3), max_size=5).map("".join)


@_PROPS
@given(values=st.lists(st.none() | utf8_text, max_size=12))
def test_json_quoted_is_json_dumps_of_each_text(values):
    got = json_quoted(pa.array(values, pa.string())).to_pylist()
    assert got == ["null" if v is None else _json_text(v) for v in values]


@_PROPS
@given(rows=st.lists(st.tuples(
    utf8_text, st.sampled_from(["meta", "self", "qa"]), st.integers(0, 2**31 - 1),
    *[st.none() | utf8_text] * 3, st.sampled_from(["correct", "incorrect", None]),
    st.none() | utf8_text), max_size=10))
def test_arrow_ids_are_byte_identical_to_the_reference_ids(rows):
    prompts = [r[0] for r in rows]
    pids = arrow_prompt_ids(pa.array(prompts, pa.string()))
    assert pids.to_pylist() == [prompt_id(p) for p in prompts]
    cols = [pa.array([r[i] for r in rows], pa.int32() if i == 2 else pa.string())
            for i in range(1, 8)]
    kinds, rounds, responses, feedbacks, refinements, verdicts, parents = cols
    got = arrow_record_ids(pids, kinds, rounds, responses, feedbacks, verdicts, refinements,
                           parents)
    assert got.to_pylist() == [
        record_id(prompt_id=prompt_id(p), kind=k, round=n, response=r, feedback=f, verdict=v,
                  refinement=rf, parent_record_id=pa_)
        for p, k, n, r, f, rf, v, pa_ in rows]


flat_values = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | utf8_text
nested_values = st.recursive(flat_values | st.floats(allow_nan=False, allow_infinity=False),
                             lambda inner: st.lists(inner, max_size=3)
                             | st.dictionaries(utf8_text, inner, max_size=3), max_leaves=6)


@_PROPS
@given(metas=st.lists(st.none() | st.dictionaries(utf8_text, flat_values, min_size=1,
                                                  max_size=4), max_size=8)
       | st.lists(st.none() | st.dictionaries(utf8_text, nested_values, max_size=3),
                  max_size=6))
def test_arrow_meta_is_the_canonical_json_of_what_arrow_holds(metas):
    try:
        values = pa.array(metas)
    except (pa.ArrowException, OverflowError):
        return  # Arrow cannot hold it: no Parquet file has it
    held = values.to_pylist()  # keys a row lacked are nulls here, as the reference reads them
    try:
        got = arrow_canonical(values, len(metas), "meta").to_pylist()
    except Reject:
        return  # refusing is always allowed: the reference then reads the batch
    assert got == [None if m is None else canonical_json(m) for m in held]
    assert got == [_canonical(_json_dict(m), "meta") for m in held]


def test_a_flat_struct_meta_is_written_without_python_per_row(monkeypatch):
    import corpus.importbatch as batch

    def per_row(*args, **kw):
        raise AssertionError("a flat struct was written row by row")

    monkeypatch.setattr(batch, "_canonical", per_row)
    values = pa.array([{"b": 1, "a": "x\ny", "é": True}, None, {"b": None, "a": "", "é": False}])
    assert arrow_canonical(values, 3, "meta").to_pylist() == [
        '{"a":"x\\ny","b":1,"é":true}', None, '{"a":"","b":null,"é":false}']


@_PROPS
@given(rows=_record_rows() | st.lists(_typed_record(), min_size=1, max_size=6),
       source=st.sampled_from([None, "cli-src"]))
def test_arrow_record_batches_equal_the_reference(rows, source):
    table = _arrow(rows)
    if table is None:
        return
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
    if batch is None:
        return
    try:
        fast = fast_record_arrow(batch, source=source, default_source="in", run_id=RUN)
    except Reject:
        return  # the list path, then the reference, read it
    chunk = importers.Chunk(batch=batch)
    ref = importers.record_rows(PATH, chunk.rows(), run_id=RUN, mapping={}, source=source,
                                default_source=source or "in")
    assert fast[0].equals(ref["prompts"]), (fast[0].to_pylist(), ref["prompts"].to_pylist())
    assert fast[1].equals(ref["records"]), (fast[1].to_pylist(), ref["records"].to_pylist())


def test_a_clean_batch_is_taken_by_the_arrow_path():
    rows = [{"prompt": f"q{i // 2} é\n\"x\"\x01", "kind": ["meta", "self", "qa"][i % 3],
             "round": i % 3, "response": f"r{i}\\", "verdict": [None, "correct"][i % 2],
             "gold_answer": f"{i},000", "meta": {"i": i, "tag": "t\u2028"}} for i in range(9)]
    batch = pa.Table.from_pylist(rows).to_batches()[0]
    prompts, records = fast_record_arrow(batch, source=None, default_source="in", run_id=RUN)
    ref = importers.record_rows(PATH, importers.Chunk(batch=batch).rows(), run_id=RUN,
                                mapping={}, source=None, default_source="in")
    assert (prompts.num_rows, records.num_rows) == (5, 9)
    assert prompts.equals(ref["prompts"]) and records.equals(ref["records"])


def _clean_record() -> st.SearchStrategy[dict]:
    """A row every path accepts: texts with any escapes, a flat meta with a fixed key set."""
    return st.fixed_dictionaries({
        "prompt": utf8_text.filter(bool), "kind": st.sampled_from(["meta", "self", "qa"]),
        "round": st.integers(0, 2**31 - 1), "response": st.none() | utf8_text,
        "feedback": st.none() | utf8_text, "refinement": st.none() | utf8_text,
        "verdict": st.sampled_from(["correct", "incorrect", None]),
        "gold_answer": st.none() | st.sampled_from(["7", "1,080", "27.0", "-3", "0.5"]),
        "source": st.none() | utf8_text,
        "meta": st.none() | st.fixed_dictionaries({"i": st.integers(-5, 5), "t": utf8_text,
                                                   "b": st.booleans()})})


@_PROPS
@given(rows=st.lists(_clean_record(), min_size=1, max_size=8),
       source=st.sampled_from([None, "cli-src"]))
def test_clean_batches_take_the_arrow_path_and_equal_the_reference(rows, source):
    batch = pa.Table.from_pylist(rows).combine_chunks().to_batches()[0]
    prompts, records = fast_record_arrow(batch, source=source, default_source="in",
                                         run_id=RUN)
    ref = importers.record_rows(PATH, importers.Chunk(batch=batch).rows(), run_id=RUN,
                                mapping={}, source=source, default_source=source or "in")
    assert prompts.equals(ref["prompts"]) and records.equals(ref["records"])
