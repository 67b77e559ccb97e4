"""Token ids and loss labels from chat messages, built turn by turn.

Each exported row carries ``messages`` (``schemas.conversation``): a list of
``{role, content, train}``. A sequence is built left to right, one turn at a time, and every
token knows which turn it came from — labels are never found by searching for a marker string.

**With a chat template** (the tokenizer has one and ``chat_template=True``): the conversation
is rendered incrementally with ``apply_chat_template(..., tokenize=False)``. For turn ``i``
the text ``render(messages[:i])`` must be a string prefix of ``render(messages[:i+1])`` (and,
for an assistant turn, ``render(messages[:i], add_generation_prompt=True)`` sits in between);
a template that rewrites earlier turns is refused. Each new piece of text is tokenised on its
own with ``add_special_tokens=False`` — exactly what happens at inference, where the prompt is
tokenised and the answer is generated token by token after it. The template is then the only
source of BOS, so there is never a second BOS from the tokenizer.

**Plain fallback** (no template)::

    [BOS]User:\\n{p}\\n\\nAssistant:\\n{r}<eos>\\n\\nUser:\\n{instruction}\\n\\nAssistant:\\n{f}<eos>…

BOS is added once, only when the tokenizer adds one to plain text.

**Labels**: tokens of a ``train=True`` assistant turn are trained up to and including the
first end-of-turn token (``eos_token`` or a known end-of-turn special such as
``<|im_end|>`` / ``<|eot_id|>``); whatever the template puts after it (usually ``\\n``) is
context. Everything else is context (label ``-100``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.conversation import NATURAL_LAYOUTS, record_conversations
from trainer.errors import TrainerError

IGNORE = -100
#: End-of-turn specials of common chat templates (used when present in the vocabulary).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eot|>")
PLAIN_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}


@dataclass
class Example:
    """One training sequence: ids, aligned labels (``-100`` = not trained) and a loss weight."""

    input_ids: list[int]
    labels: list[int]
    weight: float = 1.0
    record_id: str = ""
    part: str = "meta"  # meta | direct | qa | self

    @property
    def n_trained(self) -> int:
        """Number of tokens with a label."""
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class BuildStats:
    """What :func:`build_examples` did: examples made, dropped and token counts."""

    examples: int = 0
    dropped_too_long: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    by_part: dict[str, int] = field(default_factory=dict)


class SequenceBuilder:
    """Turns messages into an :class:`Example` with one tokenizer and one format."""

    def __init__(self, tokenizer: Any, *, use_chat_template: bool = True) -> None:
        self.tok = tokenizer
        self.use_template = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.bos = tokenizer.bos_token_id
        vocab = tokenizer.get_vocab()
        ends = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        specials = set(getattr(tokenizer, "all_special_tokens", []))
        specials |= {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
        ends |= {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and t in specials}
        self.end_ids = ends
        if not self.use_template and tokenizer.eos_token_id is None:
            raise TrainerError("the tokenizer has no eos_token: set one so the model learns to stop")
        # Does plain text get a BOS from this tokenizer (Llama yes, GPT-2/SmolLM2 no)?
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.plain_bos = self.bos is not None and len(probe) > 0 and probe[0] == self.bos

    @property
    def format_name(self) -> str:
        """``chat-template`` or ``plain``."""
        return "chat-template" if self.use_template else "plain"

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        return self.tok.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _trained_span(self, turn_ids: list[int]) -> list[int]:
        """Labels for an assistant turn: trained up to and including its end-of-turn token."""
        for j, t in enumerate(turn_ids):
            if t in self.end_ids:
                return turn_ids[: j + 1] + [IGNORE] * (len(turn_ids) - j - 1)
        raise TrainerError(
            "the chat template does not end assistant turns with an end-of-turn token "
            f"(eos or one of {', '.join(END_OF_TURN_TOKENS)}); the model would never learn to "
            "stop — use --no-chat-template for the plain format"
        )

    def pieces(self, messages: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
        """The sequence as (ids, labels) pieces in order, one or two per turn."""
        if self.use_template:
            return self._pieces_template(messages)
        return self._pieces_plain(messages)

    def _pieces_template(self, messages: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
        out: list[tuple[list[int], list[int]]] = []
        done = ""  # text rendered so far
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                head = self._render(messages[:i], generation_prompt=True)
                self._check_prefix(done, head, i)
                ids = self._encode(head[len(done) :])
                out.append((ids, [IGNORE] * len(ids)))
                done = head
            full = self._render(messages[: i + 1], generation_prompt=False)
            self._check_prefix(done, full, i)
            ids = self._encode(full[len(done) :])
            if m["role"] == "assistant" and m.get("train"):
                out.append((ids, self._trained_span(ids)))
            else:
                out.append((ids, [IGNORE] * len(ids)))
            done = full
        return out

    @staticmethod
    def _check_prefix(before: str, after: str, i: int) -> None:
        if not after.startswith(before):
            raise TrainerError(
                f"the chat template is not prefix-stable: adding message {i} changes the text "
                "of earlier turns, so per-turn labels would be wrong — use --no-chat-template"
            )

    def _pieces_plain(self, messages: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
        out: list[tuple[list[int], list[int]]] = []
        if self.plain_bos:
            out.append(([self.bos], [IGNORE]))
        eos = self.tok.eos_token_id
        for i, m in enumerate(messages):
            header = ("\n\n" if i else "") + PLAIN_ROLES[m["role"]] + ":\n"
            if m["role"] != "assistant":
                ids = self._encode(header + m["content"])
                out.append((ids, [IGNORE] * len(ids)))
                continue
            head = self._encode(header)
            out.append((head, [IGNORE] * len(head)))
            ids = self._encode(m["content"]) + [eos]
            out.append((ids, list(ids) if m.get("train") else [IGNORE] * len(ids)))
        return out

    def build(self, messages: list[dict[str, Any]], **meta: Any) -> Example:
        """One :class:`Example` from messages; ``meta`` sets weight/record_id/part."""
        ids: list[int] = []
        labels: list[int] = []
        for piece_ids, piece_labels in self.pieces(messages):
            ids += piece_ids
            labels += piece_labels
        if self.bos is not None and ids[:2] == [self.bos, self.bos]:
            raise TrainerError("sequence starts with two BOS tokens; check the chat template")
        return Example(input_ids=ids, labels=labels, **meta)


def row_conversations(row: dict[str, Any], direct_weight: float, layout: str | None = None
                      ) -> Iterable[tuple[str, float, list]]:
    """(part, weight, messages) for one export row: its ``messages``, the ``answer``
    conversation p → r̂ when its layout is ``meta+answer`` (part ``direct``), and with
    ``direct_weight`` > 0 that p → r̂ for a meta/self row whose layout does not train it yet."""
    messages = [dict(m) for m in row["messages"]]
    yield row["kind"], 1.0, messages
    layout = layout or NATURAL_LAYOUTS[row["kind"]]
    if row["kind"] == "qa" or not row.get("refinement") or layout == "answer":
        return
    weight = 1.0 if layout == "meta+answer" else direct_weight
    if weight > 0:
        direct = record_conversations(kind=row["kind"], prompt=row["prompt"], response=None,
                                      feedback=None, refinement=row["refinement"],
                                      layout="answer")[0]
        yield "direct", weight, direct


def build_examples(
    rows: list[dict[str, Any]],
    tokenizer: Any,
    *,
    max_len: int,
    use_chat_template: bool = True,
    direct_weight: float = 0.0,
    kinds: Iterable[str] = ("meta", "self", "qa"),
    layouts: dict[str, str] | None = None,
) -> tuple[list[Example], BuildStats]:
    """Examples for all rows of the selected kinds; sequences over ``max_len`` are dropped.

    ``layouts`` are the export manifest's (how each kind trains; default: the natural ones).
    """
    builder = SequenceBuilder(tokenizer, use_chat_template=use_chat_template)
    keep = set(kinds)
    stats = BuildStats()
    examples: list[Example] = []
    for row in rows:
        if row["kind"] not in keep:
            continue
        layout = (layouts or {}).get(row["kind"])
        for part, weight, messages in row_conversations(row, direct_weight, layout):
            ex = builder.build(messages, weight=weight, record_id=row["record_id"], part=part)
            if ex.n_trained == 0:
                continue  # nothing to learn (e.g. a record without feedback/refinement)
            if len(ex.input_ids) > max_len:
                stats.dropped_too_long += 1
                continue
            examples.append(ex)
            stats.examples += 1
            stats.tokens += len(ex.input_ids)
            stats.trained_tokens += ex.n_trained
            stats.by_part[part] = stats.by_part.get(part, 0) + 1
    return examples, stats
