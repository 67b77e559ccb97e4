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

from typing import Any

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
