"""The meta-skill conversation: how a (p, r, f, r̂) record becomes chat messages.

This is the one place the layout is defined, shared by the export (``messages`` column), the
trainer (which builds sequences and loss masks from these messages) and inference (which asks
the student with exactly these turns: the answer request is the first turn, self-feedback and
self-refinement are the turns before ``f`` and ``r̂``)::

    user:       p                         train=False   (context)
    assistant:  r                         train=False   (context: the initial answer)
    user:       FEEDBACK_INSTRUCTION      train=False
    assistant:  f  (ends "Verdict: …")    train=True
    user:       REFINE_INSTRUCTION        train=False
    assistant:  r̂                         train=True

That is the ``meta`` layout. A record trains in one of :data:`LAYOUTS`, chosen per kind when
a snapshot is exported and written into its manifest (``layouts``):

* ``meta`` — the turns above: the feedback and refinement skills (meta and self records
  unless an export says otherwise);
* ``answer`` — ``user: p`` → ``assistant: answer``, trained: a qa record's answer is its
  ``response``, a meta or self record's answer is its refinement r̂. This is SELF's
  self-evolution data D_self = {(p, r̂)}, so it is the layout of self records in ``evolve``;
* ``meta+answer`` — both conversations: the ``messages`` column holds the ``meta`` one and
  the trainer adds the ``answer`` one (:func:`record_conversations`).

Each message carries a boolean ``train`` so the export trains as-is with trainers that read a
per-message training flag (axolotl's ``message_field_training: train``). Changing an
instruction changes :data:`CONVERSATION_VERSION`, which is written into every manifest.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
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

#: How a record's texts become training conversations (module docstring).
LAYOUTS = ("meta", "answer", "meta+answer")
#: The layout of each kind when an export names none (every export before ``layouts`` existed).
NATURAL_LAYOUTS = {"meta": "meta", "qa": "answer", "self": "meta"}


class LayoutError(ValueError):
    """A layout name or a kind that cannot take it."""


def resolve_layouts(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The layout of every kind: :data:`NATURAL_LAYOUTS` updated with ``overrides``.

    A qa record has only an answer, so it takes only ``answer``.
    """
    layouts = dict(NATURAL_LAYOUTS)
    for kind, layout in (overrides or {}).items():
        if kind not in NATURAL_LAYOUTS:
            raise LayoutError(f"layout for kind {kind!r}: kinds are {', '.join(NATURAL_LAYOUTS)}")
        if layout not in LAYOUTS:
            raise LayoutError(f"layout {layout!r} for {kind}: use one of {', '.join(LAYOUTS)}")
        if kind == "qa" and layout != "answer":
            raise LayoutError("qa records have only an answer: their layout is 'answer'")
        layouts[kind] = layout
    return dict(sorted(layouts.items()))


def message(role: str, content: str, train: bool) -> dict[str, Any]:
    """One chat message with its training flag."""
    return {"role": role, "content": content, "train": train}


def _answer(prompt: str, answer: str | None) -> list[dict[str, Any]]:
    msgs = [message("user", prompt, False)]
    if answer is not None:
        msgs.append(message("assistant", answer, True))
    return msgs


def _meta(prompt: str, response: str | None, feedback: str | None,
          refinement: str | None) -> list[dict[str, Any]]:
    msgs = [message("user", prompt, False)]
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


def layout_patterns() -> Iterator[tuple[str, str, dict[str, bool], list[list[dict[str, Any]]]]]:
    """Every shape a record's conversations can take: ``(kind, layout, present, convs)``.

    For each kind, each layout it can take and each pattern of present texts (response,
    feedback, refinement), the :func:`record_conversations` of :data:`PLACEHOLDERS`.
    :func:`layout_hash` fingerprints them.
    """
    for kind in NATURAL_LAYOUTS:
        for layout in (("answer",) if kind == "qa" else LAYOUTS):
            for has in itertools.product((True, False), repeat=3):
                present = dict(zip(("response", "feedback", "refinement"), has, strict=True))
                convs = record_conversations(
                    kind=kind, prompt=PLACEHOLDERS["prompt"], layout=layout,
                    **{k: PLACEHOLDERS[k] if v else None for k, v in present.items()})
                yield kind, layout, present, convs


def layout_hash() -> str:
    """Content hash of the layouts themselves: roles, instruction texts and ``train`` flags of
    every pattern. Editing an instruction or a flag here changes it, even if nobody bumps
    :data:`CONVERSATION_VERSION`."""
    return content_id([[kind, layout, convs] for kind, layout, _, convs in layout_patterns()])


def record_conversations(
    *,
    kind: str,
    prompt: str,
    response: str | None,
    feedback: str | None,
    refinement: str | None,
    layout: str | None = None,
) -> list[list[dict[str, Any]]]:
    """Every training conversation of one record in ``layout`` (default: the kind's natural
    layout). ``meta+answer`` gives two; the others one. Missing texts yield only the turns
    there are; nothing is invented."""
    layout = resolve_layouts({kind: layout} if layout else None)[kind]
    answer = response if kind == "qa" else refinement
    if layout == "answer":
        return [_answer(prompt, answer)]
    meta = _meta(prompt, response, feedback, refinement)
    return [meta] if layout == "meta" else [meta, _answer(prompt, answer)]


def record_messages(*, layout: str | None = None, **texts: str | None
                    ) -> list[dict[str, Any]]:
    """The ``messages`` column of one record: its first conversation in ``layout``.

    ``texts`` are the keywords of :func:`record_conversations` (kind, prompt, response,
    feedback, refinement). Without a layout: meta/self records in the ``meta`` layout, qa
    records as ``answer``.
    """
    return record_conversations(layout=layout, **texts)[0]  # type: ignore[arg-type]
