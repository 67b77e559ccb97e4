"""Versioned prompt templates: Jinja2 files that render chat messages.

A template set is a folder of ``NAME.j2`` files; the built-in set ``default`` lives in
``generation/templates/default/`` and any folder path can be given as a set. Names used by
selfevo: ``response`` (initial answer r), ``feedback`` (teacher critique f, ends with the
verdict line), ``refinement`` (teacher r̂), ``self_feedback`` and ``self_refinement`` (the
student on its own answer, used by evolve and ``selfevo refine``).

File format: Jinja2 text in which a line that is exactly ``<|system|>``, ``<|user|>`` or
``<|assistant|>`` starts a message of that role; the text up to the next such line is its
content (surrounding blank lines stripped). ``{# … #}`` comments document the variables.
Rendering is strict: a variable the template uses but the caller does not give is an error
(``gold_answer`` is optional and defaults to none). The function ``conversation(prompt=,
response=, feedback=, ask="answer"|"feedback"|"refinement")`` inserts the turns of
:mod:`schemas.conversation` verbatim (passed beside the text, not through it), so the answer,
self-feedback and self-refinement requests at inference are exactly what the trainer trained.

A template's :attr:`PromptTemplate.hash` is ``content_id`` of its file text (plus the
conversation version when it uses ``conversation``): it goes into every call and record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from generation.errors import GenerationError
from schemas.identity import content_id

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
ROLES = ("system", "user", "assistant")
#: Variables a template may use without the caller giving them.
OPTIONAL_VARIABLES = {"gold_answer": None, "gold_rationale": None}

_ROLE_LINE = re.compile(r"^<\|(system|user|assistant|conversation)\|>[ \t]*$", re.MULTILINE)


def conversation_messages(
    *, prompt: str, response: str | None = None, feedback: str | None = None,
    ask: str = "feedback",
) -> list[dict[str, str]]:
    """The turns of :mod:`schemas.conversation` up to the one that asks for ``ask``.

    ``answer``: the question alone (the first turn of every layout); ``feedback``: p, r and
    the feedback instruction; ``refinement``: p, r, the instruction, f and the refine
    instruction. Built by :func:`schemas.conversation.record_messages` plus its instruction
    constants, so every request is exactly the context the trainer trained on.
    """
    from schemas.conversation import FEEDBACK_INSTRUCTION, REFINE_INSTRUCTION, record_messages

    if ask not in ("answer", "feedback", "refinement"):
        raise GenerationError(
            f"conversation(ask={ask!r}): expected 'answer', 'feedback' or 'refinement'")
    if ask == "answer":
        return [{"role": "user", "content": prompt}]
    if response is None:
        raise GenerationError(f"conversation(ask={ask!r}) needs the response")
    if ask == "refinement" and feedback is None:
        raise GenerationError("conversation(ask='refinement') needs the feedback")
    msgs = record_messages(
        kind="self",
        prompt=prompt,
        response=response,
        feedback=feedback if ask == "refinement" else None,
        refinement=None,
        layout="meta",
    )
    instruction = FEEDBACK_INSTRUCTION if ask == "feedback" else REFINE_INSTRUCTION
    msgs.append({"role": "user", "content": instruction})
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def parse_messages(
    text: str,
    *,
    origin: str = "template",
    conversations: list[list[dict[str, str]]] | None = None,
) -> list[dict[str, str]]:
    """Split rendered template text at role lines into ``[{"role", "content"}, …]``.

    A ``<|conversation|>`` line stands for the next entry of ``conversations``, inserted
    verbatim (no whitespace trimming: the trainer's texts are reproduced byte for byte).
    """
    marks = list(_ROLE_LINE.finditer(text))
    if not marks:
        raise GenerationError(f"{origin}: no '<|user|>' (or system/assistant) line")
    if text[: marks[0].start()].strip():
        raise GenerationError(f"{origin}: text before the first role line '<|…|>'")
    pending = list(conversations or [])
    messages: list[dict[str, str]] = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        content = text[m.end() : end].strip("\n").rstrip()
        if m.group(1) == "conversation":
            if content.strip() or not pending:
                raise GenerationError(f"{origin}: misplaced '<|conversation|>' line")
            messages.extend(pending.pop(0))
            continue
        if not content.strip():
            raise GenerationError(f"{origin}: the {m.group(1)} message is empty")
        messages.append({"role": m.group(1), "content": content})
    return messages


@dataclass(frozen=True)
class PromptTemplate:
    """One versioned template file."""

    name: str
    template_set: str
    path: Path
    text: str
    hash: str
    variables: tuple[str, ...]  # names the template reads (optional ones included)
    _template: Any = field(repr=False, compare=False)

    def render(self, **variables: Any) -> list[dict[str, str]]:
        """Chat messages for these variables (strict: a missing variable is an error)."""
        from jinja2 import UndefinedError

        conversations: list[list[dict[str, str]]] = []

        def conversation(**kwargs: Any) -> str:
            # Messages travel beside the text, not through it, so they stay byte-exact.
            conversations.append(conversation_messages(**kwargs))
            return "<|conversation|>"

        values = {**OPTIONAL_VARIABLES, **variables, "conversation": conversation}
        try:
            text = self._template.render(**values)
        except UndefinedError as e:
            raise GenerationError(
                f"template {self.name!r} (set {self.template_set!r}) needs a variable: {e.message}"
            ) from None
        return parse_messages(text, origin=f"template {self.path}", conversations=conversations)


def _set_dir(template_set: str) -> Path:
    path = Path(template_set)
    if path.is_dir():  # a user's own folder of .j2 files
        return path.resolve()
    builtin = TEMPLATES_DIR / template_set
    if builtin.is_dir():
        return builtin
    raise GenerationError(
        f"unknown template set {template_set!r}: use one of {', '.join(list_template_sets())} "
        "or a folder of NAME.j2 files"
    )


@cache
def _environment(directory: Path) -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(directory),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # chat text, not HTML
    )
    return env


def get_template(name: str, template_set: str = "default") -> PromptTemplate:
    """The template ``name`` of ``template_set`` (a built-in set name or a folder)."""
    from jinja2 import TemplateSyntaxError, meta

    directory = _set_dir(template_set)
    path = directory / f"{name}.j2"
    if not path.is_file():
        names = ", ".join(t.stem for t in sorted(directory.glob("*.j2")))
        raise GenerationError(f"no template {name!r} in set {template_set!r} (have: {names})")
    text = path.read_text(encoding="utf-8")
    env = _environment(directory)
    try:
        variables = meta.find_undeclared_variables(env.parse(text))
        template = env.from_string(text)
    except TemplateSyntaxError as e:
        raise GenerationError(f"{path}:{e.lineno}: template syntax error: {e.message}") from None
    identity: Any = text
    if "conversation" in variables:
        from schemas.conversation import CONVERSATION_VERSION

        # The rendered turns come from schemas.conversation: its version is part of the content.
        identity = {"text": text, "conversation": CONVERSATION_VERSION}
        variables.discard("conversation")
    return PromptTemplate(
        name=name,
        template_set=template_set,
        path=path,
        text=text,
        hash=content_id(identity),
        variables=tuple(sorted(variables)),
        _template=template,
    )


def list_templates(template_set: str = "default") -> list[PromptTemplate]:
    """Every template of a set, by name."""
    directory = _set_dir(template_set)
    return [get_template(p.stem, template_set) for p in sorted(directory.glob("*.j2"))]


def list_template_sets() -> list[str]:
    """Names of the built-in template sets."""
    return sorted(p.name for p in TEMPLATES_DIR.iterdir() if p.is_dir())
