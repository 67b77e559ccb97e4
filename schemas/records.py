"""Record and manifest types.

``RecordIn`` is the interchange format read by ``selfevo records import``; ``ExportRow`` is one
row of ``selfevo snapshot export`` (the same names plus ids, provenance and ``messages``);
``SnapshotManifest`` is ``manifest.json``. JSON Schema files generated from these models live in
``schemas/jsonschema/`` (regenerate with ``python -m schemas``; a test fails when stale).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from schemas.conversation import CONVERSATION_VERSION, NATURAL_LAYOUTS, layout_hash
from schemas.identity import content_id, training_hash
from schemas.numbers import canonical_answer, require_finite

Kind = Literal["meta", "self", "qa"]
Verdict = Literal["correct", "incorrect"]

#: Version of the export row / manifest layout. Bump on any incompatible change.
#: 2: the manifest carries ``training_hash`` (the records and the layout they train in).
EXPORT_SCHEMA_VERSION = 2


def current_training_hash(content_hash: str, layouts: dict[str, str] | None = None) -> str:
    """The ``training_hash`` an export of these records, in ``layouts`` (kind -> layout; the
    natural ones where absent), has when written by this code."""
    chosen = {**NATURAL_LAYOUTS, **(layouts or {})}
    return training_hash(content_hash, schema_version=EXPORT_SCHEMA_VERSION,
                         conversation_version=CONVERSATION_VERSION,
                         layout=content_id({"layouts": chosen, "patterns": layout_hash()}))


#: Deepest nesting of lists and objects accepted in a field (``meta``): deeper input is
#: refused with one line instead of a RecursionError somewhere downstream.
MAX_DEPTH = 64
#: Largest ``round`` (the store's INTEGER column is 32-bit).
MAX_ROUND = 2**31 - 1
_JSON_SCALARS = (str, int, float, bool, type(None))


def check_json_value(value: Any, path: str) -> None:
    """Refuse what cannot be stored and exported as JSON text, wherever it sits in ``value``:
    a non-finite number, a lone UTF-16 surrogate (no UTF-8 spelling), a non-string object
    key, a non-JSON type, nesting deeper than :data:`MAX_DEPTH`. Iterative: the check itself
    never recurses. Raises ValueError naming the path, e.g. ``meta.scores[2]``."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        v, where, depth = stack.pop()
        if isinstance(v, dict | list | tuple):
            if depth >= MAX_DEPTH:
                raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels; flatten it")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, item in items:
                if isinstance(v, dict) and not isinstance(k, str):
                    raise ValueError(f"{where}: object key {k!r} is not a string")
                if isinstance(k, str):
                    _check_text(k, where)
                # a key that is not printable (a line break, a lone surrogate) is quoted,
                # so that the error naming it stays one line
                key = k if not isinstance(k, str) or k.isprintable() else repr(k)
                stack.append((item, f"{where}.{key}" if isinstance(v, dict) else f"{where}[{k}]",
                              depth + 1))
        elif isinstance(v, str):
            _check_text(v, where)
        elif isinstance(v, float | Decimal):
            try:
                require_finite(v)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        elif not isinstance(v, _JSON_SCALARS):
            raise ValueError(f"{where}: a {type(v).__name__} is not a JSON value; cast it to "
                             "text first")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where}: contains a lone surrogate ({text[exc.start]!r}) that "
                         "UTF-8 cannot spell; fix the text's encoding") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class _Input(_Strict):
    """An input row (import files): every field must survive hashing, storing and export."""

    @field_validator("*", mode="before")
    @classmethod
    def _json_safe(cls, v: Any, info: ValidationInfo) -> Any:
        # The one choke point of every input field (issue 12): what passes here can be
        # hashed, stored and exported as JSON without a traceback.
        check_json_value(v, info.field_name or "?")
        return v


class PromptIn(_Input):
    """A prompt as imported: the question and, when labelled, its gold answer and rationale."""

    text: str = Field(min_length=1, description="The question shown to the model.")
    gold_answer: str | None = Field(None, description="Canonical final answer, e.g. '18'.")
    gold_rationale: str | None = Field(None, description="Worked solution, kept for refinements.")
    source: str | None = Field(None, description="Where the prompt came from, e.g. 'gsm8k'.")
    split: str | None = Field(None, description="Dataset split, e.g. 'train' or 'test'.")
    meta: dict[str, Any] | None = Field(None, description="Free-form extra fields.")

    @field_validator("gold_answer", mode="before")
    @classmethod
    def _canonical_gold(cls, v: Any) -> Any:
        # One spelling of a gold answer however it arrives: SVAMP's 27.0, "1,080", " $5 "
        # all store canonical (schemas.numbers); text that is not a lone number is kept.
        return None if v is None else canonical_answer(v)


class RecordIn(_Input):
    """A (p, r, f, r̂) record in the interchange format (``records import`` input)."""

    prompt: str = Field(min_length=1, description="The prompt text p.")
    response: str | None = Field(None, description="Initial response r (for qa: the answer).")
    feedback: str | None = Field(None, description="Feedback f, ending with a verdict line.")
    verdict: Verdict | None = Field(None, description="'correct', 'incorrect' or null (unknown).")
    refinement: str | None = Field(None, description="Refined response r̂.")
    kind: Kind = Field(description="meta (teacher feedback), self (own feedback) or qa.")
    round: int = Field(0, ge=0, le=MAX_ROUND,
                       description="Self-evolution round; 0 for meta and qa data.")
    gold_answer: str | None = Field(None, description="Gold answer of the prompt, if known.")
    source: str | None = Field(None, description="Where the record came from.")
    meta: dict[str, Any] | None = Field(None, description="Free-form extra fields.")

    _canonical_gold = field_validator("gold_answer", mode="before")(
        PromptIn._canonical_gold.__func__  # type: ignore[attr-defined]
    )


class Message(_Strict):
    """One chat turn of an exported record (see ``schemas.conversation``)."""

    role: Literal["system", "user", "assistant"]
    content: str
    train: bool = Field(description="True for turns a trainer should put loss on.")


class ExportRow(_Strict):
    """One row of a snapshot export."""

    record_id: str
    prompt_id: str
    kind: Kind
    round: int
    prompt: str
    response: str | None
    feedback: str | None
    verdict: Verdict | None
    refinement: str | None
    gold_answer: str | None
    source: str | None
    parent_record_id: str | None
    meta: str | None = Field(description="The record's meta object as canonical JSON text.")
    run_id: str = Field(description="The run that created the record.")
    responder: str | None = Field(description="Model spec that wrote the response.")
    teacher: str | None = Field(description="Model spec that wrote feedback and refinement.")
    response_call_id: str | None
    feedback_call_id: str | None
    refinement_call_id: str | None
    templates: str | None = Field(description="Template hashes used, as canonical JSON text.")
    messages: list[Message]


class Run(_Strict):
    """One command execution: the provenance every written row points to."""

    run_id: str
    command: str
    config: dict[str, Any]
    code_version: str
    started_at: datetime
    finished_at: datetime | None = None
    status: Literal["running", "ok", "failed", "interrupted", "killed"]
    counts: dict[str, Any] | None = None
    error: str | None = None


class Decision(_Strict):
    """The outcome of one curation step for one record (kept or dropped: drops are data)."""

    run_id: str
    record_id: str
    step: str
    passed: bool
    score: float | None = None
    reason: str | None = None
    detail: dict[str, Any] | None = None


class ManifestFile(_Strict):
    """A data file of an export with its size and sha256."""

    path: str
    rows: int
    bytes: int
    sha256: str


class SnapshotManifest(_Strict):
    """``manifest.json`` of an export: what it is, how it was selected, how to verify it."""

    schema_version: int = Field(description="EXPORT_SCHEMA_VERSION of the writer.")
    conversation_version: str = Field(description="Layout of the messages column.")
    layouts: dict[str, str] = Field(
        default_factory=lambda: dict(NATURAL_LAYOUTS),
        description="How each kind trains (schemas.conversation.LAYOUTS), e.g. self: answer "
                    "for SELF's (p, r̂); absent in exports made before it: the natural layouts.")
    name: str
    snapshot_id: str
    content_hash: str = Field(description="selection_hash of the exported record ids.")
    training_hash: str = Field(
        description="schemas.identity.training_hash: content_hash plus schema version, "
        "conversation version and layout hash; the trainer recomputes it.")
    parent: str | None
    selection: dict[str, Any] = Field(description="The where clause, base snapshot and note.")
    format: Literal["parquet", "jsonl", "hf"]
    n: int
    counts: dict[str, dict[str, int]] = Field(description="Row counts by kind, round, verdict.")
    files: list[ManifestFile]
    runs: list[str] = Field(description="Runs that created the exported records.")
    code_version: str
    created_at: datetime = Field(description="When the snapshot (not the export) was created.")
