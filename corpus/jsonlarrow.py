"""JSONL batches parsed by ``pyarrow.json`` where that gives exactly what ``json.loads``
gives line by line (the reference, ``corpus.importers``), else nothing.

Parsing a batch in C++ is what lets a JSONL import reach Parquet's speed, but pyarrow's
reader does not mean what ``json.loads`` means in every case. Each difference found is
turned away here, and the batch then goes through the reference (still correct, slower):

* **what a line is**: pyarrow reads a stream of values, not lines: two objects on one line
  are two rows, a blank line is none, and a bare ``null`` line crashed the process (pyarrow
  26). Every line must start with ``{`` and end with ``}``, with as many rows as lines.
* **depth**: a line nested a few hundred levels deep crashed pyarrow's parser (its stack),
  so a line with more than MAX_OPENERS ``{`` and ``[`` (strings included) is turned away.
* **raw control characters** (a tab, a lone CR) inside a string are refused by
  ``json.loads`` and taken by pyarrow: a batch holding any byte below 0x20 other than the
  line ends (``\\n``, ``\\r\\n``) is turned away.
* **types**: pyarrow unifies a column's values into one type, so ``1`` and ``1.5`` both
  become doubles, an integer past 64 bits a double, a date-like text a timestamp, and an
  object missing a key gets that key as null. Only texts, 64-bit integers, booleans and
  flat objects of those whose every member is present are vouched for; floats, lists,
  nested objects, timestamps and a member null in any row are turned away.
* **texts**: a batch must be valid UTF-8 through and through.

What pyarrow refuses outright (duplicate keys, a lone surrogate, malformed JSON, a number
past a double) raises; the reference then words the error for the line it is on.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

_FLAT = (pa.types.is_string, pa.types.is_int64, pa.types.is_boolean)
MAX_OPENERS = 64  # '{' and '[' a line may hold; deeper nesting crashed pyarrow's parser


def lines_of(block: bytes) -> list[bytes]:
    """The lines of a block, each with its ``\\n`` (the last one may lack it), as iterating
    over the file gives them."""
    parts = block.split(b"\n")
    return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _plain(raw: np.ndarray, block: bytes) -> bool:
    """Every line is one object and nothing around it (``{`` … ``}``), holds no control byte
    but its line end, and opens at most MAX_OPENERS objects or arrays."""
    ends = np.flatnonzero(raw == ord("\n"))
    if not len(ends) or ends[-1] != len(raw) - 1:
        ends = np.append(ends, len(raw))  # the last line has no line end
    crlf = block.count(b"\r\n") if b"\r" in block else 0
    if crlf != block.count(b"\r") or int(np.count_nonzero(raw < 0x20)) != (
            int(np.count_nonzero(raw == ord("\n"))) + crlf):
        return False
    starts = np.concatenate(([0], ends[:-1] + 1))
    last = ends - 1 - (raw[np.maximum(ends - 1, 0)] == ord("\r"))
    if (np.any(ends <= starts) or np.any(raw[starts] != ord("{"))
            or np.any(raw[np.maximum(last, 0)] != ord("}"))):
        return False
    openers = np.flatnonzero((raw == ord("{")) | (raw == ord("[")))
    return int(np.bincount(np.searchsorted(ends, openers)).max()) <= MAX_OPENERS


def _vouched(batch: pa.RecordBatch) -> bool:
    """Whether every column has a type (and, for objects, every member a value) that means
    what ``json.loads`` gave."""
    for col in batch.columns:
        t = col.type
        if any(ok(t) for ok in _FLAT) or pa.types.is_null(t):
            continue
        if not pa.types.is_struct(t) or any(
                not any(ok(t.field(i).type) for ok in _FLAT) for i in range(t.num_fields)):
            return False
        valid = col.is_valid()
        if any(col.field(i).filter(valid).null_count for i in range(t.num_fields)):
            return False
    return True


def arrow_batch(block: bytes) -> pa.RecordBatch | None:
    """The JSONL lines of ``block`` (whole lines) as one record batch, or None where the
    batch must go through the reference (see the module docstring)."""
    raw = np.frombuffer(block, np.uint8)
    if not len(raw) or not _plain(raw, block):
        return None
    try:
        table = pj.read_json(io.BytesIO(block), read_options=pj.ReadOptions(
            block_size=len(block) + 1, use_threads=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    if table.num_rows != block.count(b"\n") + (not block.endswith(b"\n")):
        return None
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
    if batch is None or not _vouched(batch):
        return None
    try:
        batch.validate(full=True)  # texts are UTF-8
    except pa.ArrowInvalid:
        return None
    return batch
