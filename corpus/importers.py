"""Importing prompts and (p, r, f, r̂) records from files into the store.

Formats: JSONL (one object per line), JSON (an array of objects, e.g. SVAMP.json), CSV
(header row), Parquet, and a directory saved by HF ``datasets`` (``save_to_disk``).

An import streams and is atomic. The file is read in batches of BATCH_ROWS rows; each batch
is validated (over whole Arrow arrays or column lists in ``corpus.importbatch`` when it can
vouch for the batch, else row by row through pydantic, the reference, which words every
error). On a file store a writer thread holds ONE write transaction open from the start and
inserts the validated batches, a group at a time, while the next ones are read and
validated (DuckDB's work overlaps Python's); on a lake, whose commit may lose to another
writer and be re-run, the batches are staged as Parquet in a private temporary folder with
no store connection open and inserted in ONE transaction at the end. Either way Python holds
a few batches of the file (DuckDB holds the transaction's rows), the first bad row stops
the import with a one-line error naming the file, the line (or row) and the field, and a
failure or a SIGKILL at any point leaves nothing from the file in the
store (the transaction never commits; the run row is marked failed, or killed by the next
writer). Ids are content hashes and inserts keep the first row per id and skip ids already
stored, so importing the same file twice adds nothing.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import queue
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from corpus import inserts
from corpus.errors import CorpusError
from corpus.importbatch import (
    Columns,
    Reject,
    arrow_columns,
    fast_prompt_columns,
    fast_record_arrow,
    fast_record_columns,
    row_columns,
)
from corpus.jsonlarrow import arrow_batch, lines_of
from corpus.presets import Preset, get_preset
from corpus.store import Store
from corpus.worker import Worker
from schemas.identity import file_sha256
from schemas.records import MAX_DEPTH, PromptIn, RecordIn, check_json_value

if TYPE_CHECKING:
    from corpus.display import Tracker

PROMPT_FIELDS = tuple(PromptIn.model_fields)  # text, gold_answer, gold_rationale, source, split, meta
RECORD_FIELDS = tuple(RecordIn.model_fields)
# Columns of a snapshot export that are derived (ids, chat layout) or point at rows of
# another store (call ids); `records import` of an export skips them.
EXPORT_ONLY_COLUMNS = {"record_id", "prompt_id", "run_id", "messages", "response_call_id",
                       "feedback_call_id", "refinement_call_id", "created_at", "verdict_error"}
# Provenance columns of an export that are kept when present.
PASSTHROUGH_COLUMNS = {"responder", "teacher", "templates", "parent_record_id"}
_KEYS = {"prompts": "prompt_id", "records": "record_id"}
FORMATS = ("jsonl", "json", "csv", "parquet", "hf")
BATCH_ROWS = 10_000  # rows per validated batch and per staged Arrow table
BATCH_BYTES = 16 << 20  # about the most data in one Parquet or JSONL batch (long rows)
PART_BATCHES = 10  # batches per staged part file and per INSERT of the final transaction
QUEUE_GROUPS = 1  # groups of PART_BATCHES batches waiting for the live writer
IMPORT_MEMORY_LIMIT = "128MB"  # DuckDB's cache while a file store imports (_memory_limit)
GROUP_BYTES = 64 << 20  # a live group is handed over at PART_BATCHES batches or this many bytes
# Ctrl-C is the store's to handle (runs end 'interrupted'); pyarrow's own SIGINT handlers,
# installed around its reads and writes, left a later DuckDB connect hanging after a Ctrl-C.
pa.enable_signal_handlers(False)
# A prompt may be long, but one cell is never more than this (csv's default is 128 KiB).
csv.field_size_limit(64 * 1024 * 1024)


class ImportInputError(CorpusError):
    """A row of an import file is malformed; the message names file, line and field."""


@dataclass
class ImportResult:
    """What an import read and wrote."""

    path: str
    run_id: str
    rows: int  # rows read from the file
    new_prompts: int = 0  # prompts rows that were not in the store yet
    new_records: int = 0  # records rows that were not in the store yet
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self, what: str) -> str:
        """One line for the CLI, e.g. ``12 prompts read, 0 new (run r…)``."""
        if what == "records":
            return (f"{self.rows} records read from {self.path}: {self.new_records} new records, "
                    f"{self.new_prompts} new prompts (run {self.run_id})")
        return f"{self.rows} prompts read from {self.path}: {self.new_prompts} new (run {self.run_id})"


# -- reading -----------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """The format of ``path`` from its name (a directory is a saved HF dataset)."""
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix in {".json", ".csv", ".parquet"}:
        return suffix[1:]
    raise ImportInputError(
        f"{path}: cannot tell the format from the name; pass --format "
        f"({', '.join(FORMATS)})"
    )


def _utf8_error(path: Path, exc: UnicodeDecodeError, data: bytes, offset: int = 0) -> ImportInputError:
    line = data[: exc.start].count(b"\n") + 1 + offset
    col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return ImportInputError(
        f"{path}: line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {col}); "
        "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
    )


def _loads(path: Path, text: str, where: str) -> Any:
    """``json.loads`` with its failures as one line naming the file and line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = f"line {exc.lineno}" if where == "" else where
        raise ImportInputError(
            f"{path}: {line}: malformed JSON at column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ImportInputError(
            f"{path}: {where or 'line 1'}: JSON nested too deeply to read (the limit for a "
            f"field is {MAX_DEPTH} levels); flatten it") from None


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as f:
        yield from _jsonl_rows(path, f, 1)


def _jsonl_rows(path: Path, lines: Iterable[bytes], first: int,
                ) -> Iterator[tuple[str, dict[str, Any]]]:
    """The reference reading of JSONL ``lines`` (raw, with their line ends), the first of
    them line ``first`` of ``path``: one ``json.loads`` per line."""
    for lineno, raw in enumerate(lines, start=first):
        if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]  # a BOM is accepted as in CSV and JSON
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8").rstrip("\r\n")  # error columns stay on this line
        except UnicodeDecodeError as exc:
            raise _utf8_error(path, exc, raw, lineno - 1) from None
        obj = _loads(path, line, f"line {lineno}")
        if not isinstance(obj, dict):
            raise ImportInputError(
                f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}"
            )
        yield f"line {lineno}", obj


def _decode_all(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, exc, data) from None


def _read_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    obj = _loads(path, _decode_all(path), "")
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        raise ImportInputError(f"{path}: expected a JSON array of objects")
    for i, item in enumerate(obj, start=1):
        if not isinstance(item, dict):
            raise ImportInputError(
                f"{path}: item {i}: expected a JSON object, got {type(item).__name__}"
            )
        yield f"item {i}", item


def _read_csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    # strict: a quote left open must not swallow the rest of the file into one cell.
    reader = csv.DictReader(io.StringIO(_decode_all(path), newline=""), strict=True)
    rows = iter(reader)
    while True:
        start = reader.line_num + 1  # the line the next row starts on
        try:
            if reader.line_num == 0:
                reader.fieldnames  # noqa: B018 (reads the header, so `start` is past it)
                start = reader.line_num + 1
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            hint = ("a quoted cell opened here is never closed: close the quote, or double "
                    'a quote inside a quoted cell ("")'
                    if "end of data" in str(exc) or "expected after" in str(exc)
                    else "fix the CSV there")
            raise ImportInputError(f"{path}: line {start}: malformed CSV ({exc}); {hint}") from None
        if None in row:  # more cells than header columns
            raise ImportInputError(
                f"{path}: line {start}: {len(row[None]) + len(reader.fieldnames or [])} "
                f"cells but the header has {len(reader.fieldnames or [])} columns"
            )
        # An empty CSV cell means "no value", not the empty string.
        yield f"line {start}", {k: (v if v != "" else None) for k, v in row.items()}


def _parquet_file(path: Path) -> pq.ParquetFile:
    # pre_buffer off: with it, iter_batches keeps every row group's buffered bytes until the
    # file is closed (reading 3M bench records: Arrow's allocations grew from 102 MB at 0.5M
    # rows to 229 MB at 2.5M; without it 45 MB throughout), and it read twice as slowly
    try:
        return pq.ParquetFile(path, pre_buffer=False)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise ImportInputError(f"{path}: not a readable Parquet file ({exc})") from None


def _parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """A Parquet file's record batches of at most BATCH_ROWS rows and, by the file's own
    size per row, about BATCH_BYTES of data (long texts make small batches)."""
    f = _parquet_file(path)
    meta = f.metadata
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    per_row = size / meta.num_rows if meta.num_rows else 1
    yield from f.iter_batches(batch_size=max(1, min(BATCH_ROWS, int(BATCH_BYTES / per_row))))


def _read_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    n = 0
    for batch in _parquet_batches(path):
        for row in batch.to_pylist():
            n += 1
            yield f"row {n}", row


def _datasets_module() -> Any:
    try:
        import datasets
    except ImportError:
        from schemas.install import install_hint

        raise ImportInputError(
            f"reading HF datasets needs the datasets package: {install_hint('datasets')}"
        ) from None
    return datasets


def _dataset_rows(ds: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    datasets = _datasets_module()
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split, part in parts:
        for i, row in enumerate(part, start=1):
            # The split of a DatasetDict is a default for the row's `split` field.
            if split is not None:
                row = {"__split__": split, **row}
            yield (f"split {split} row {i}" if split else f"row {i}"), row


def _read_hf(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    datasets = _datasets_module()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError or its own errors
        raise ImportInputError(
            f"{path}: not a directory written by datasets' save_to_disk ({exc})"
        ) from None
    yield from _dataset_rows(ds)


def read_hub_rows(name: str, split: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of ``datasets.load_dataset(NAME[:CONFIG], split=split)`` (all splits when None).

    NAME is a Hub id (``openai/gsm8k:main``) or a local folder of data files.
    """
    datasets = _datasets_module()
    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as exc:  # network, unknown name or config, missing split …
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImportInputError(
            f"hf:{name}: cannot load the dataset ({first}); check the name, add :CONFIG if it "
            "has several, and that HF_HUB_OFFLINE is not set when it must be downloaded"
        ) from None
    if split is not None:  # the split asked for is also the label
        ds = datasets.DatasetDict({split: ds})
    yield from _dataset_rows(ds)


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv,
           "parquet": _read_parquet, "hf": _read_hf}


def read_rows(path: str | Path, fmt: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, row)`` from a file; ``location`` is ``"line 3"``, ``"row 3"`` …

    Raises ImportInputError (naming file and line) on unreadable input.
    """
    path = Path(path)
    if not path.exists():
        raise ImportInputError(f"{path}: no such file or directory")
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise ImportInputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    yield from READERS[fmt](path)


# -- field mapping and validation ----------------------------------------------------------------


def parse_map(spec: str | None, targets: tuple[str, ...] = PROMPT_FIELDS) -> dict[str, str]:
    """``"question=text,answer=gold_answer"`` → ``{"question": "text", …}``.

    A target may also be ``meta.NAME`` (kept in the meta object under NAME).
    """
    mapping: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        src, sep, dst = part.partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise ImportInputError(f"--map: expected SOURCE=TARGET pairs, got {part!r}")
        if dst not in targets and not dst.startswith("meta."):
            raise ImportInputError(
                f"--map: unknown target field {dst!r}; targets are {', '.join(targets)} "
                "or meta.NAME"
            )
        mapping[src] = dst
    return mapping


def _apply_map(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    if not mapping:
        return row
    out: dict[str, Any] = {}
    meta_extra: dict[str, Any] = {}
    for k, v in row.items():
        dst = mapping.get(k, k)
        if dst.startswith("meta."):
            meta_extra[dst[5:]] = v
        else:
            out[dst] = v
    if meta_extra:
        meta = out.get("meta")
        out["meta"] = {**(meta if isinstance(meta, dict) else {}), **meta_extra}
    return out


def _json_object(value: Any) -> Any:
    """Meta columns arrive as JSON text from CSV files and exports; parse them."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _validation_error(path: Path, where: str, exc: ValidationError,
                      row: dict[str, Any]) -> ImportInputError:
    err = exc.errors()[0]
    fld = ".".join(str(x) for x in err["loc"]) or "?"
    if err["type"] == "missing":
        fields = ", ".join(sorted(k for k in row if not k.startswith("__"))) or "none"
        hint = f" (the row has: {fields}; rename with --map SOURCE={fld})"
        msg = "required field is missing" + hint
    elif err["type"] == "extra_forbidden":
        msg = f"unknown field; map it with --map {fld}=TARGET or drop the column"
    else:
        got = type(err.get("input")).__name__
        msg = f"{err['msg'].removeprefix('Value error, ')} (got {got})"
    return ImportInputError(f"{path}: {where}: field '{fld}': {msg}")


def _prompt_fields(
    path: Path, where: str, raw: dict[str, Any], *, preset: Preset | None,
    mapping: dict[str, str], source: str | None, split: str | None,
    default_source: str | None = None,
) -> dict[str, Any]:
    row = _apply_map(raw, mapping)
    default_split = row.pop("__split__", None)
    if preset is not None:
        try:
            fields = preset.to_prompt(row)
        except KeyError as exc:
            have = ", ".join(sorted(k for k in row if not k.startswith("__")))
            raise ImportInputError(
                f"{path}: {where}: field '{exc.args[0]}': required by --preset {preset.name} "
                f"but missing (the row has: {have})"
            ) from None
        except (TypeError, ValueError) as exc:
            fld = next((f for f in preset.fields if f"'{f}'" in str(exc)), preset.fields[-1])
            raise ImportInputError(f"{path}: {where}: field '{fld}': {exc}") from None
        default_split = default_split or preset.default_split(path)
    else:
        fields = {k: v for k, v in row.items() if k in PROMPT_FIELDS}
        extra = {k: v for k, v in row.items() if k not in PROMPT_FIELDS}
        fields["meta"] = _json_object(fields.get("meta"))
        if extra:  # unmapped columns are kept, not lost
            meta = fields.get("meta")
            fields["meta"] = {**(meta if isinstance(meta, dict) else {}), **extra}
    fields["source"] = source or fields.get("source") or default_source
    fields["split"] = split or fields.get("split") or default_split
    try:
        return PromptIn(**fields).model_dump()
    except ValidationError as exc:
        raise _validation_error(path, where, exc, row) from None


def read_prompt_rows(
    path: str | Path, *, fmt: str | None = None, preset: str | None = None,
    mapping: dict[str, str] | None = None, source: str | None = None, split: str | None = None,
    rows: Iterator[tuple[str, dict[str, Any]]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Validated prompt fields (``PromptIn`` as a dict) of each row of a file.

    ``source``: ``--source``, else the row's ``source`` field, else the preset name, else the
    file name; ``split``: ``--split``, else the row's, else the preset's default (GSM8K: the
    file stem when it is train/test; SVAMP: test) or the split of a saved DatasetDict.
    ``rows`` replaces reading ``path`` (which then only names the input in errors).
    """
    path = Path(path)
    p = get_preset(preset) if preset else None
    default_source = p.name if p else (path.stem if path.is_file() else path.name)
    for where, raw in rows if rows is not None else read_rows(path, fmt):
        yield _prompt_fields(path, where, raw, preset=p, mapping=mapping or {},
                             source=source, split=split, default_source=default_source)


def read_preset_rows(path: Path, preset: Preset) -> Iterator[dict[str, Any]]:
    """Prompt fields of a benchmark file read with ``preset``, plus the raw row as ``_raw``."""
    for where, raw in read_rows(path):
        fields = _prompt_fields(path, where, raw, preset=preset, mapping={}, source=None,
                                split=None, default_source=preset.name)
        fields["_raw"] = raw
        yield fields


class _ProvenanceText(BaseModel):
    """The text provenance columns an export carries (PASSTHROUGH_COLUMNS but templates)."""

    model_config = ConfigDict(strict=True)
    responder: str | None = None
    teacher: str | None = None
    parent_record_id: str | None = None


def _record_fields(path: Path, where: str, raw: dict[str, Any],
                   mapping: dict[str, str], source: str | None) -> dict[str, Any]:
    row = _apply_map(raw, mapping)
    row.pop("__split__", None)
    passthrough = {k: row.pop(k) for k in list(row) if k in PASSTHROUGH_COLUMNS}
    for k in EXPORT_ONLY_COLUMNS:
        row.pop(k, None)
    row["meta"] = _json_object(row.get("meta"))
    if source:
        row["source"] = source
    try:
        rec = RecordIn(**row).model_dump()
    except ValidationError as exc:
        raise _validation_error(path, where, exc, row) from None
    passthrough["templates"] = _json_object(passthrough.get("templates"))
    try:  # the text ones are typed like every other field (`"responder": 0` crashed)
        _ProvenanceText(**{k: v for k, v in passthrough.items() if k != "templates"})
    except ValidationError as exc:
        raise _validation_error(path, where, exc, row) from None
    for k, v in passthrough.items():  # provenance passes the same choke point as the rest
        try:
            check_json_value(v, k)
        except ValueError as exc:
            raise ImportInputError(f"{path}: {where}: field '{k}': {exc}") from None
    rec.update({k: v for k, v in passthrough.items() if v is not None})
    return rec


# -- writing -------------------------------------------------------------------------------------


def _require_rows(path: Path, n: int) -> None:
    if n == 0:
        raise ImportInputError(f"{path}: file is empty (no rows to import)")


class Chunk:
    """One batch of input rows: ``(location, row)`` pairs for the per-row reference, or
    columns for the fast path; a batch Arrow read (Parquet) becomes rows only when the
    reference must read it."""

    def __init__(self, rows: list[tuple[str, dict[str, Any]]] | None = None, *,
                 batch: pa.RecordBatch | None = None, first: int = 1,
                 reference: Callable[[], list[tuple[str, dict[str, Any]]]] | None = None,
                 ) -> None:
        self._rows, self._batch, self._first = rows, batch, first
        self._reference = reference  # the rows as the reference reads them (JSONL)
        self.n = batch.num_rows if batch is not None else len(rows or [])

    def rows(self) -> list[tuple[str, dict[str, Any]]]:
        """The rows with their locations (``row 3``, ``line 3`` …)."""
        if self._rows is None and self._reference is not None:
            self._rows = self._reference()
        if self._rows is None:
            assert self._batch is not None
            self._rows = [(f"row {i}", r) for i, r in
                          enumerate(self._batch.to_pylist(), start=self._first)]
        return self._rows

    def arrow(self, mapping: dict[str, str]) -> pa.RecordBatch | None:
        """The batch as Arrow read it, when nothing is ``--map``-ped (else None)."""
        return self._batch if not mapping else None

    def columns(self, mapping: dict[str, str]) -> Columns:
        """The rows, ``--map``-ped, as columns (``corpus.importbatch``)."""
        if self._batch is not None and not mapping:
            return arrow_columns(self._batch)
        return row_columns([_apply_map(raw, mapping) for _, raw in self.rows()])


def _chunks(rows: Iterator[tuple[str, dict[str, Any]]]) -> Iterator[tuple[Chunk, ImportInputError | None]]:
    """Rows in batches of BATCH_ROWS; a reading error ends the batch read so far and comes
    with it, so the caller validates those rows first and the file's FIRST error is the one
    reported, exactly as when rows were validated one by one as read."""
    size = BATCH_ROWS  # read at call time: tests make batches small
    chunk: list[tuple[str, dict[str, Any]]] = []
    try:
        for item in rows:
            chunk.append(item)
            if len(chunk) >= size:
                yield Chunk(chunk), None
                chunk = []
    except ImportInputError as exc:
        yield Chunk(chunk), exc
        return
    if chunk:
        yield Chunk(chunk), None


def _parquet_chunks(path: Path) -> Iterator[tuple[Chunk, ImportInputError | None]]:
    """A Parquet file's record batches as they are read: no row dicts unless needed."""
    first = 1
    for batch in _parquet_batches(path):
        yield Chunk(batch=batch, first=first), None
        first += batch.num_rows


def _jsonl_blocks(f: BinaryIO) -> Iterator[bytes]:
    """A JSONL file in blocks of whole lines: at most BATCH_ROWS lines, about BATCH_BYTES
    (a longer line is a block of its own)."""
    held = b""
    while True:
        if len(held) < BATCH_BYTES:
            more = f.read(BATCH_BYTES)
            held += more + f.readline() if more else b""  # a read ends at a line end
        if not held:
            return
        ends = np.flatnonzero(np.frombuffer(held, np.uint8) == ord("\n"))
        cut = int(ends[BATCH_ROWS - 1]) + 1 if len(ends) >= BATCH_ROWS else len(held)
        block, held = held[:cut], held[cut:]
        yield block


def _jsonl_chunks(path: Path) -> Iterator[tuple[Chunk, ImportInputError | None]]:
    """A JSONL file in batches: parsed by pyarrow where ``corpus.jsonlarrow`` vouches that
    this gives exactly the reference's rows, else line by line by the reference (whose
    first error comes with the rows read before it, as in :func:`_chunks`)."""
    first = 1
    with open(path, "rb") as f:
        for block in _jsonl_blocks(f):
            batch = arrow_batch(block)
            if batch is not None:
                yield Chunk(batch=batch, first=first, reference=lambda block=block, first=first:
                            list(_jsonl_rows(path, lines_of(block), first))), None
            else:
                rows: list[tuple[str, dict[str, Any]]] = []
                try:
                    rows.extend(_jsonl_rows(path, lines_of(block), first))
                except ImportInputError as exc:
                    yield Chunk(rows), exc
                    return
                yield Chunk(rows), None
            first += block.count(b"\n") + (not block.endswith(b"\n"))


def read_chunks(path: Path, fmt: str | None) -> Iterator[tuple[Chunk, ImportInputError | None]]:
    """The rows of a file in batches (:func:`read_rows`' checks and errors)."""
    kind = (fmt or detect_format(path)) if path.exists() else fmt
    if kind == "parquet":
        return _parquet_chunks(path)
    if kind == "jsonl" and path.is_file():
        return _jsonl_chunks(path)
    return _chunks(read_rows(path, fmt))


@contextlib.contextmanager
def _memory_limit(con: Any, limit: str) -> Iterator[None]:
    """DuckDB's memory limit lowered to ``limit`` for the block, then back to its default
    (selfevo sets no other).

    DuckDB keeps the blocks an import writes in its buffer cache, up to its limit (80% of
    RAM by default), so without this an import's memory grew with the file. Measured on 3M
    bench records: peak RSS 1.31 GB with 512 MB (still growing at the end), 1.12 GB with
    256 MB, 1.04 GB with 128 MB and flat from the first 0.5M records on; the same speed
    each, and a re-import into the 3M store or of 16 KB texts went through with 128 MB."""
    con.execute(f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        con.execute("RESET memory_limit")


class _Aborted(Exception):
    """The reader failed: the writer's transaction must roll back."""


_END, _ABORT = object(), object()  # what the reader hands the writer besides batches


class _Stage:
    """Validated batches on their way into the store, all in ONE transaction.

    Live (a file store): a writer thread opens the transaction at once and inserts each
    group of batches as the reader hands it over (a queue of QUEUE_GROUPS), so DuckDB
    inserts one group (GIL released) while Python validates the next; memory holds a few
    groups. Groups grow from 1 batch to PART_BATCHES (or GROUP_BYTES), so that the writer
    starts early and then pays DuckDB's per-statement cost once per 100,000 rows. A
    reading error or an interrupt hands over an abort, which rolls the transaction back.

    Spilled (a lake, whose commit may lose to another writer and is then re-run from the
    start, which a file being read cannot be): batches go to Parquet part files of
    PART_BATCHES batches in a private temporary folder, with no store connection open, and
    are inserted at the end.

    Either way :meth:`land` is the one transaction, and of several rows with one id the
    first of the file wins: within a batch or part by row order, across them because each
    insert skips the ids already stored, by an earlier batch too.
    """

    def __init__(self, live: bool) -> None:
        self._dir = None if live else tempfile.TemporaryDirectory(prefix="selfevo-import-")
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._parts: dict[str, list[tuple[str, int]]] = {"prompts": [], "records": []}
        self.rows: dict[str, int] = {"prompts": 0, "records": 0}
        self._queue: queue.Queue[Any] | None = queue.Queue(QUEUE_GROUPS) if live else None
        self._worker: Worker | None = None  # live: the writer (corpus.worker: why not a Thread)
        self._pending: dict[str, list[pa.Table]] = {}  # live: batches not handed over yet
        self._pending_rows = self._pending_bytes = 0
        self._groups = 0  # handed over so far: the first groups are smaller, to start sooner
        self._outcome: dict[str, Any] = {}
        self.written = 0  # rows the live writer has inserted (display only)

    def __enter__(self) -> _Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._worker is not None and self._worker.running:
            self._hand_over(_ABORT)  # the reader failed or was interrupted
            self._worker.wait_through_interrupts()
        for w in self._writers.values():
            w.close()
        if self._dir is not None:
            self._dir.cleanup()

    def start(self, store: Store, label: str) -> None:
        """Live: begin the transaction on a writer thread that takes the batches of :meth:`add`."""
        def write() -> None:
            try:
                self._outcome["new"] = self.land(store, None, label)
            except BaseException as exc:  # noqa: BLE001 (re-raised in the reader's thread)
                self._outcome["error"] = exc

        self._worker = Worker(write, "selfevo-import-writer")
        self._worker.start()

    def add(self, tables: dict[str, pa.Table]) -> None:
        """Hand over (live) or stage (spilled) one validated batch: per table its rows
        (``corpus.records`` columns plus run_id)."""
        for table, rows in tables.items():
            self.rows[table] += rows.num_rows
        if self._queue is not None:
            for table, rows in tables.items():
                self._pending.setdefault(table, []).append(rows)
            self._pending_rows += max(rows.num_rows for rows in tables.values())
            self._pending_bytes += sum(rows.nbytes for rows in tables.values())
            if (self._pending_rows >= min(self._groups + 1, PART_BATCHES) * BATCH_ROWS
                    or self._pending_bytes >= GROUP_BYTES):
                self._hand_over_pending()
            return
        for table, rows in tables.items():
            if rows.num_rows:
                self._spill(table, rows)

    def _hand_over_pending(self) -> None:
        """Hand the batches gathered so far to the writer as one group (the writer asks
        which ids are new once per group and table: DuckDB's per-statement cost)."""
        group = {t: pa.concat_tables(rows, promote_options="permissive")
                 for t, rows in self._pending.items()}
        self._pending, self._pending_rows, self._pending_bytes = {}, 0, 0
        self._groups += 1
        if group:
            self._hand_over(group)

    def _hand_over(self, item: Any) -> None:
        """Put ``item`` on the writer's queue, waiting while it is full; a writer that failed
        (or finished) takes nothing more: its error is raised here."""
        assert self._queue is not None and self._worker is not None
        while True:
            if not self._worker.running:
                if item is _ABORT:
                    return
                raise self._outcome.get("error") or CorpusError(
                    "internal: the import's writer stopped early")
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _spill(self, table: str, rows: pa.Table) -> None:
        assert self._dir is not None
        parts = self._parts[table]
        if not parts or parts[-1][1] >= PART_BATCHES * BATCH_ROWS:
            if table in self._writers:
                self._writers.pop(table).close()
            parts.append((f"{self._dir.name}/{table}-{len(parts):06d}.parquet", 0))
            self._writers[table] = pq.ParquetWriter(parts[-1][0], rows.schema,
                                                    compression="lz4")
        self._writers[table].write_table(rows)
        parts[-1] = (parts[-1][0], parts[-1][1] + rows.num_rows)

    def finish(self, progress: Tracker | None, label: str) -> dict[str, int]:
        """Live: tell the writer the file is read, wait for its commit; the new counts."""
        assert self._worker is not None
        self._hand_over_pending()
        self._hand_over(_END)
        total = sum(self.rows.values())
        if progress is not None:
            progress.restart(f"write {label}", total)
            progress.update(info="rows written")
        while not self._worker.wait(0.1):
            if progress is not None:
                progress.update(completed=self.written)
        if "error" in self._outcome:
            raise self._outcome["error"]
        if progress is not None:
            progress.update(completed=total, force=True)
        return self._outcome["new"]

    def _live_batches(self) -> Iterator[dict[str, pa.Table]]:
        assert self._queue is not None
        while (item := self._queue.get()) is not _END:
            if item is _ABORT:
                raise _Aborted
            yield item

    def land(self, store: Store, progress: Tracker | None, label: str) -> dict[str, int]:
        """Insert the rows not in the store yet in ONE transaction; the new counts per table.

        Live: the batches as the reader hands them over (prompts before records, batch by
        batch); spilled: one statement per part file, parts in file order."""
        names = {t: w.schema.names for t, w in self._writers.items()}
        for w in self._writers.values():
            w.close()
        self._writers.clear()

        def write(con: Any) -> dict[str, int]:
            # Re-run whole when a commit on a lake loses to another writer: the bar starts
            # over with it (display only; the counts come from this attempt alone).
            if progress is not None:
                progress.restart(f"write {label}", sum(self.rows.values()))
                progress.update(info="rows written")
            new = {"prompts": 0, "records": 0}
            if self._queue is not None:
                with _memory_limit(con, IMPORT_MEMORY_LIMIT):
                    writers = {t: inserts.RowGroupInserter(con, t, _KEYS[t]) for t in new}
                    try:
                        for batch in self._live_batches():
                            for table in ("prompts", "records"):  # records point at prompts
                                if table in batch:
                                    writers[table].add(batch[table])
                                    self.written += batch[table].num_rows
                        return {t: w.close() for t, w in writers.items()}
                    finally:
                        for w in writers.values():
                            w.release()
            for table in ("prompts", "records"):
                for path, n in self._parts[table]:
                    source = "read_parquet('{}', file_row_number=true)".format(
                        path.replace("'", "''"))
                    new[table] += inserts.insert_absent_from(
                        con, table, _KEYS[table], source, names[table],
                        first_by=inserts.ORDINAL)
                    if progress is not None:
                        progress.advance(n)
            return new

        return store.transact(write, appends=tuple(self._parts), run_id=store.open_run_id)


def _reading(progress: Tracker | None, label: str) -> None:
    if progress is not None:
        progress.update(description=f"read {label}", info="rows read and validated",
                        force=True)


def _stage_all(stage: _Stage, path: Path,
               chunks: Iterator[tuple[Chunk, ImportInputError | None]],
               validate: Callable[[Chunk], dict[str, pa.Table]],
               progress: Tracker | None) -> int:
    """Validate and stage every batch; returns how many rows were read."""
    n = 0
    for chunk, error in chunks:
        stage.add(validate(chunk))
        n += chunk.n
        if progress is not None:
            progress.advance(chunk.n)
        if error is not None:
            raise error
    _require_rows(path, n)
    return n


def _file_config(path: Path, fmt: str | None) -> dict[str, Any]:
    fmt = fmt or detect_format(path) if path.exists() else fmt
    config: dict[str, Any] = {"path": str(path.resolve()), "format": fmt}
    if path.is_file():
        config["sha256"] = file_sha256(str(path))
    return config


Validate = Callable[[str, Chunk], dict[str, pa.Table]]


def _land(
    store: Store, command: str, config: dict[str, Any], label: Path,
    chunks: Iterator[tuple[Chunk, ImportInputError | None]], validate: Validate,
    progress: Tracker | None, *, records: bool = False,
) -> ImportResult:
    """Validate and stage batch by batch, then insert what is new in one transaction under
    one run (see the module docstring). ``validate(run_id, batch)`` gives the tables."""
    live = not store.spec.is_lake
    with store.run(command, config) as run, _Stage(live) as stage:
        name = label.name if label.exists() else str(label)  # a file, or hf:NAME
        _reading(progress, name)
        if live:
            stage.start(store, name)
        n = _stage_all(stage, label, chunks, lambda chunk: validate(run.run_id, chunk),
                       progress)
        new = stage.finish(progress, name) if live else stage.land(store, progress, name)
        run.add("rows", n)
        run.add("prompts", new["prompts"])
        if records:
            run.add("records", new["records"])
    return ImportResult(str(label), run.run_id, n, new_prompts=new["prompts"],
                        new_records=new["records"], config=config)


def _default_source(path: Path, preset: Preset | None) -> str:
    return preset.name if preset else (path.stem if path.is_file() else path.name)


def _prompt_validator(
    path: Path, *, preset: str | None, mapping: dict[str, str] | None, source: str | None,
    split: str | None,
) -> Validate:
    """Batch validation of prompt rows: the column-wise fast path when it can vouch for the
    batch (no preset), else the per-row reference (``_prompt_fields``)."""
    from corpus.records import PROMPT_COLUMNS, arrow_rows, make_prompt

    p = get_preset(preset) if preset else None
    mapping = mapping or {}
    default_source = _default_source(path, p)

    def validate(run_id: str, chunk: Chunk) -> dict[str, pa.Table]:
        if p is None:
            with contextlib.suppress(Reject):
                return {"prompts": fast_prompt_columns(
                    chunk.columns(mapping), chunk.n, source=source, split=split,
                    default_source=default_source, run_id=run_id)}
        made = [make_prompt(**_prompt_fields(path, where, raw, preset=p, mapping=mapping,
                                             source=source, split=split,
                                             default_source=default_source))
                for where, raw in chunk.rows()]
        return {"prompts": arrow_rows(made, PROMPT_COLUMNS, run_id)}

    return validate


def import_prompts(
    store: Store, path: str | Path, *, fmt: str | None = None, preset: str | None = None,
    mapping: dict[str, str] | None = None, source: str | None = None,
    split: str | None = None, progress: Tracker | None = None,
) -> ImportResult:
    """Import a prompt file atomically; returns counts (re-importing adds 0 new).

    ``progress`` (a ``corpus.display`` tracker) counts rows read and validated, then written.
    """

    path = Path(path)
    if not path.exists():
        raise ImportInputError(f"{path}: no such file or directory")
    config = _file_config(path, fmt) | {"preset": preset, "map": mapping or {},
                                        "source": source, "split": split}
    validate = _prompt_validator(path, preset=preset, mapping=mapping, source=source,
                                 split=split)
    return _land(store, "prompts import", config, path, read_chunks(path, fmt), validate,
                 progress)


def import_hub_prompts(
    store: Store, name: str, *, preset: str | None = None,
    mapping: dict[str, str] | None = None, source: str | None = None,
    split: str | None = None, progress: Tracker | None = None,
) -> ImportResult:
    """Import prompts from ``datasets.load_dataset(NAME[:CONFIG])`` atomically (``--hf``)."""

    config = {"hf": name, "preset": preset, "map": mapping or {}, "source": source,
              "split": split}
    label = Path(f"hf:{name}")
    validate = _prompt_validator(label, preset=preset, mapping=mapping, source=source,
                                 split=split)
    return _land(store, "prompts import", config, label, _chunks(read_hub_rows(name, split)),
                 validate, progress)


def import_generated(
    store: Store, n: int, *, seed: int = 0, split: str | None = None,
    progress: Tracker | None = None,
) -> ImportResult:
    """Generate ``n`` synthetic word problems (source ``generated``) and import them."""
    from corpus.records import PROMPT_COLUMNS, arrow_rows, make_prompt
    from corpus.wordproblems import generate_problems

    if n < 1:
        raise CorpusError("--n must be at least 1")
    config = {"n": n, "seed": seed, "split": split, "generator": "corpus.wordproblems"}
    rows = ((f"problem {i}", {"text": p["text"], "gold_answer": p["gold_answer"],
                              "gold_rationale": p["gold_rationale"], "source": "generated",
                              "split": split, "meta": p["meta"]})
            for i, p in enumerate(generate_problems(n, seed), start=1))

    def validate(run_id: str, chunk: Chunk) -> dict[str, pa.Table]:
        return {"prompts": arrow_rows([make_prompt(**f) for _, f in chunk.rows()],
                                      PROMPT_COLUMNS, run_id)}

    return _land(store, "prompts generate", config, Path(f"generated(n={n}, seed={seed})"),
                 _chunks(rows), validate, progress)


def record_rows(path: Path, chunk: list[tuple[str, dict[str, Any]]], *, run_id: str,
                mapping: dict[str, str], source: str | None, default_source: str,
                ) -> dict[str, pa.Table]:
    """The reference validation of a batch of records rows (one ``RecordIn`` per row):
    prompts (one per distinct text, the first row's gold answer and source) and records."""
    from corpus.records import PROMPT_COLUMNS, RECORD_COLUMNS, arrow_rows, make_prompt, make_record

    prompts, records = [], []
    pids: dict[str, str] = {}  # prompt text -> id: hash each distinct prompt once
    for where, raw in chunk:
        rec = _record_fields(path, where, raw, mapping, source)
        src = rec.pop("source") or default_source
        pid = pids.get(rec["prompt"])
        if pid is None:
            prompt = make_prompt(rec["prompt"], gold_answer=rec["gold_answer"], source=src)
            pid = pids[rec["prompt"]] = prompt["prompt_id"]
            prompts.append(prompt)
        records.append(make_record(
            prompt_id=pid, kind=rec["kind"], round=rec["round"],
            response=rec["response"], feedback=rec["feedback"], verdict=rec["verdict"],
            refinement=rec["refinement"], parent_record_id=rec.get("parent_record_id"),
            responder=rec.get("responder"), teacher=rec.get("teacher"),
            templates=rec.get("templates"), source=src, meta=rec["meta"],
        ))
    return {"prompts": arrow_rows(prompts, PROMPT_COLUMNS, run_id),
            "records": arrow_rows(records, RECORD_COLUMNS, run_id)}


def import_records(
    store: Store, path: str | Path, *, fmt: str | None = None,
    mapping: dict[str, str] | None = None, source: str | None = None,
    progress: Tracker | None = None, fast: bool = True,
) -> ImportResult:
    """Import (p, r, f, r̂) records (``RecordIn`` rows) and their prompts, atomically.

    ``fast=False`` validates every batch with the per-row reference only (benchmarks).
    """
    path = Path(path)
    if not path.exists():
        raise ImportInputError(f"{path}: no such file or directory")
    mapping = mapping or {}
    config = _file_config(path, fmt) | {"map": mapping, "source": source}
    default_source = source or path.stem

    def validate(run_id: str, chunk: Chunk) -> dict[str, pa.Table]:
        if fast and (batch := chunk.arrow(mapping)) is not None:
            with contextlib.suppress(Reject):
                p, r = fast_record_arrow(batch, source=source, default_source=default_source,
                                         run_id=run_id)
                return {"prompts": p, "records": r}
        if fast:
            with contextlib.suppress(Reject):
                p, r = fast_record_columns(chunk.columns(mapping), chunk.n, source=source,
                                           default_source=default_source, run_id=run_id)
                return {"prompts": p, "records": r}
        return record_rows(path, chunk.rows(), run_id=run_id, mapping=mapping, source=source,
                           default_source=default_source)

    return _land(store, "records import", config, path, read_chunks(path, fmt), validate,
                 progress, records=True)
