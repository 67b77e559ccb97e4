"""The meta-skill conversation: how a (p, r, f, r̂) record becomes chat messages.

This is the one place the layout is defined, shared by the export (``messages`` column), the
trainer (which builds sequences and loss masks from these messages) and inference-time
self-refinement (which asks the student with exactly these turns)::

    user:       p                         train=False   (context)
    assistant:  r                         train=False   (context: the initial answer)
    user:       FEEDBACK_INSTRUCTION      train=False
    assistant:  f  (ends "Verdict: …")    train=True
    user:       REFINE_INSTRUCTION        train=False
    assistant:  r̂                         train=True

A ``qa`` record is ``user: p`` → ``assistant: answer`` (the record's ``response``), trained.
Each message carries a boolean ``train`` so the export trains as-is with trainers that read a
per-message training flag (axolotl's ``message_field_training: train``). Changing an
instruction changes :data:`CONVERSATION_VERSION`, which is written into every manifest.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from schemas.identity import content_id

CONVERSATION_VERSION = "meta-v1"

FEEDBACK_INSTRUCTION = (
    "Review your answer above step by step. Point out any mistake and say how to fix it. "
    "End with one line: 'Verdict: correct' or 'Verdict: incorrect'."
)

REFINE_INSTRUCTION = (
    "Using your feedback, write a refined answer to the original question. "
    "Show your reasoning and end with 'The answer is <answer>.'"
)


def message(role: str, content: str, train: bool) -> dict[str, Any]:
    """One chat message with its training flag."""
    return {"role": role, "content": content, "train": train}


def record_messages(
    *,
    kind: str,
    prompt: str,
    response: str | None,
    feedback: str | None,
    refinement: str | None,
) -> list[dict[str, Any]]:
    """Chat messages of one record in the documented meta-skill layout.

    A meta/self record without feedback or refinement yields only the turns it has; nothing
    is invented. ``qa`` trains the response as the answer.
    """
    msgs = [message("user", prompt, False)]
    if kind == "qa":
        if response is not None:
            msgs.append(message("assistant", response, True))
        return msgs
    if response is not None:
        msgs.append(message("assistant", response, False))
    if feedback is not None:
        msgs.append(message("user", FEEDBACK_INSTRUCTION, False))
        msgs.append(message("assistant", feedback, True))
    if refinement is not None:
        msgs.append(message("user", REFINE_INSTRUCTION, False))
        msgs.append(message("assistant", refinement, True))
    return msgs


#: Placeholder texts standing for a record's own texts in :func:`layout_patterns`.
PLACEHOLDERS = {"prompt": "\x00p", "response": "\x00r", "feedback": "\x00f",
                "refinement": "\x00rr"}


def layout_patterns() -> Iterator[tuple[bool, dict[str, bool], list[dict[str, Any]]]]:
    """Every shape a record's messages can take: ``(is_qa, present, messages)``.

    ``present`` says which of response / feedback / refinement the record has (qa: only
    response counts); ``messages`` are :func:`record_messages` of :data:`PLACEHOLDERS`. The
    export builds its SQL from these, and :func:`layout_hash` fingerprints them.
    """
    for qa in (True, False):
        for has_r, has_f, has_rr in itertools.product((True, False), repeat=3):
            if qa and not (has_f and has_rr):
                continue  # qa ignores f and r̂: one pattern per response state
            present = {"response": has_r, "feedback": has_f, "refinement": has_rr}
            msgs = record_messages(
                kind="qa" if qa else "meta", prompt=PLACEHOLDERS["prompt"],
                **{k: PLACEHOLDERS[k] if v else None for k, v in present.items()})
            yield qa, present, msgs


def layout_hash() -> str:
    """Content hash of the layout itself: roles, instruction texts and ``train`` flags of every
    pattern. Editing an instruction or a flag here changes it, even if nobody bumps
    :data:`CONVERSATION_VERSION`."""
    return content_id([msgs for _, _, msgs in layout_patterns()])
