"""Record and manifest types, content identity and the meta-skill conversation layout.

The bottom layer: imports nothing from the rest of selfevo, so the trainer can depend on it
on a machine that has only the export directory.
"""

from schemas.conversation import CONVERSATION_VERSION, record_messages
from schemas.errors import UserError
from schemas.identity import canonical_json, content_id, prompt_id, record_id, selection_hash
from schemas.records import (
    EXPORT_SCHEMA_VERSION,
    Decision,
    ExportRow,
    Message,
    PromptIn,
    RecordIn,
    Run,
    SnapshotManifest,
)

__all__ = [
    "CONVERSATION_VERSION",
    "EXPORT_SCHEMA_VERSION",
    "Decision",
    "ExportRow",
    "Message",
    "PromptIn",
    "RecordIn",
    "Run",
    "SnapshotManifest",
    "UserError",
    "canonical_json",
    "content_id",
    "prompt_id",
    "record_id",
    "record_messages",
    "selection_hash",
]
