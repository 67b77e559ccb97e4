"""Content identity: tagged hashes of canonical JSON.

Canonical JSON (scheme ``h1``): ``json.dumps(obj, sort_keys=True, ensure_ascii=False,
separators=(",", ":"))`` encoded as UTF-8; no timestamps or run ids go into hashed objects.
An id is ``"h1:" + sha256(canonical)[:32]`` (128 bits): re-importing or re-generating the
same content gives the same id, so inserts can be insert-or-ignore. The tag lets the scheme
change later without silently colliding with old ids.

This module lives in ``schemas`` (the bottom layer) so the trainer can verify exported rows
without importing the store.
"""

from __future__ import annotations

import hashlib
import json
from json.encoder import c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring as _json_text  # what json.dumps(ensure_ascii=False) uses
from typing import Any

SCHEME = "h1"


# json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")) builds this
# encoder on every call; built once, the bulk import's per-row cost halves.
_ENCODERS = {nan: json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                                   allow_nan=nan) for nan in (True, False)}


def canonical_json(obj: Any, *, allow_nan: bool = True) -> str:
    """Serialise ``obj`` deterministically (sorted keys, no whitespace, UTF-8 kept).

    ``allow_nan=False`` raises ValueError on NaN and infinities instead of writing them."""
    return _ENCODERS[allow_nan].encode(obj)


def _not_json(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# The C encoder canonical_json ends in, made once and without the circular-reference check.
_TREE_ENCODER = None if c_make_encoder is None else c_make_encoder(
    None, _not_json, _json_text, None, ":", ",", True, False, False)


def canonical_json_tree(obj: dict[str, Any] | list[Any]) -> str:
    """:func:`canonical_json` of an object or list that is a tree (as ``json.loads`` and Arrow
    build them: no value reached twice), with ``allow_nan=False``: the bulk import's form,
    without the per-call set-up and the circular-reference bookkeeping. A cycle raises
    RecursionError instead of ValueError."""
    if _TREE_ENCODER is None:
        return canonical_json(obj, allow_nan=False)
    return "".join(_TREE_ENCODER(obj, 0))


def content_id(obj: Any) -> str:
    """Tagged content hash of ``obj``'s canonical JSON, e.g. ``h1:3f2a…``."""
    digest = hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()
    return f"{SCHEME}:{digest[:32]}"


def prompt_id(text: str) -> str:
    """Identity of a prompt: its exact text (attributes such as the gold answer are not identity)."""
    return content_id({"prompt": text})


def record_id(
    *,
    prompt_id: str,
    kind: str,
    round: int,
    response: str | None,
    feedback: str | None,
    verdict: str | None,
    refinement: str | None,
    parent_record_id: str | None = None,
) -> str:
    """Identity of a record: its prompt, kind, round, the four texts and the edit parent."""
    return content_id(
        {
            "prompt_id": prompt_id,
            "kind": kind,
            "round": round,
            "response": response,
            "feedback": feedback,
            "verdict": verdict,
            "refinement": refinement,
            "parent_record_id": parent_record_id,
        }
    )


def selection_hash(record_ids: list[str]) -> str:
    """Content hash of a snapshot: the sorted list of its record ids (which are content hashes)."""
    return content_id(sorted(record_ids))


def training_hash(
    content_hash: str, *, schema_version: int, conversation_version: str, layout: str
) -> str:
    """Hash of what a trainer trains on: the records (``content_hash``, which covers every
    text through the record ids) and how they become sequences (the export schema version,
    the conversation version and :func:`schemas.conversation.layout_hash`).

    The export writes it into ``manifest.json``; the trainer recomputes it from the rows it
    verified and its own layout, so no edit of the manifest or of a message trains under a
    genuine hash.
    """
    return content_id({"content_hash": content_hash, "schema_version": schema_version,
                       "conversation_version": conversation_version, "layout": layout})


def file_sha256(path: str) -> str:
    """Plain sha256 hex digest of a file's bytes (manifest integrity check)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hex_ids(canonicals: list[str]) -> list[str]:
    """:func:`content_id` of many canonical JSON texts (one comprehension, no call per id)."""
    sha = hashlib.sha256
    return [f"{SCHEME}:{sha(c.encode('utf-8')).hexdigest()[:32]}" for c in canonicals]


def prompt_ids(texts: list[str]) -> list[str]:
    """:func:`prompt_id` of many texts, each distinct text hashed once (bulk import)."""
    distinct = list(dict.fromkeys(texts))
    jt = _json_text
    ids = dict(zip(distinct, _hex_ids(['{"prompt":' + jt(t) + "}" for t in distinct]),
                   strict=True))
    return [ids[t] for t in texts]


