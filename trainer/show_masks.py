"""``--show-masks N``: print examples with the trained tokens highlighted.

Context (label ``-100``) is dim; trained tokens are bold green on a dark background, so the
feedback, the refinement and their end-of-turn tokens stand out. Without colours (piped
output) the trained spans are wrapped in ``⟦…⟧``. Decoding is span by span
from the same ids the trainer uses — what you see is exactly what gets loss.
"""

from __future__ import annotations

from typing import Any

from trainer.config import TrainConfig
from trainer.sequences import IGNORE, Example


def spans(example: Example) -> list[tuple[bool, list[int]]]:
    """Consecutive (trained?, token ids) runs of an example."""
    out: list[tuple[bool, list[int]]] = []
    for tok, lab in zip(example.input_ids, example.labels, strict=True):
        trained = lab != IGNORE
        if out and out[-1][0] == trained:
            out[-1][1].append(tok)
        else:
            out.append((trained, [tok]))
    return out


def trained_texts(example: Example, tokenizer: Any) -> list[str]:
    """The decoded trained spans of an example (special tokens kept)."""
    return [tokenizer.decode(ids) for trained, ids in spans(example) if trained]


def render(example: Example, tokenizer: Any, *, brackets: bool = False) -> Any:
    """A rich Text of the example with trained spans styled (and ``⟦…⟧`` when ``brackets``)."""
    from rich.text import Text

    text = Text()
    for trained, ids in spans(example):
        piece = tokenizer.decode(ids)
        if trained and brackets:
            piece = f"⟦{piece}⟧"
        text.append(piece, style="bold green on grey15" if trained else "dim")
    return text


def show_masks(cfg: TrainConfig, n: int, console: Any = None) -> None:
    """Print ``n`` examples of ``cfg.data`` as the trainer would build them for ``cfg.base``."""
    from rich.console import Console
    from rich.rule import Rule
    from transformers import AutoTokenizer

    from trainer.data import load_export
    from trainer.sequences import SequenceBuilder, build_examples

    console = console or Console()
    export = load_export(cfg.data)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base)
    fmt = SequenceBuilder(tokenizer, use_chat_template=cfg.chat_template).format_name
    examples, stats = build_examples(
        export.rows[: max(n, 1) * 2], tokenizer, max_len=cfg.max_len,
        use_chat_template=cfg.chat_template, direct_weight=cfg.direct_weight, kinds=cfg.kinds,
        layouts=export.manifest.layouts,
    )
    # Without colours (a pipe, a file, NO_COLOR) the trained spans are bracketed ⟦…⟧ instead.
    brackets = console.color_system is None
    mark = "inside ⟦…⟧" if brackets else "highlighted"
    console.print(f"format: {fmt}; trained tokens are {mark}, the rest is context")
    for ex in examples[:n]:
        console.print(Rule(f"{ex.part} {ex.record_id} weight={ex.weight} "
                           f"trained {ex.n_trained}/{len(ex.input_ids)} tokens"))
        console.print(render(ex, tokenizer, brackets=brackets), highlight=False, markup=False,
                      soft_wrap=True)
