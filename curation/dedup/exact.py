"""Exact dedup: texts equal after normalisation form one cluster.

Normalisation (the same for every text, vectorised in polars):

1. Unicode NFKC (full-width digits, ligatures and compatibility forms fold to plain ones);
2. lowercase;
3. punctuation policy: a run of punctuation/symbol characters is removed when it touches
   whitespace or the start/end of the text ("Hello, world!" -> "hello world",
   "(3 apples)" -> "3 apples"), and kept when it sits between two word characters, so
   numbers and words keep their meaning ("3.5" stays "3.5", not "35"; "don't", "x-1");
4. whitespace runs (spaces, tabs, newlines) collapse to one space; ends are stripped.

Two texts are exact duplicates when their normalised forms are equal (grouped on the string
itself, not on a hash, so there are no collisions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

# Rust regex (polars) has no look-around, so "punctuation next to a space or an end" is two
# patterns that keep the space they consumed.
_PUNCT_BEFORE_SPACE = r"[^\w\s]+(\s|$)"
_PUNCT_AFTER_SPACE = r"(^|\s)[^\w\s]+"


def as_series(texts: Sequence[str | None] | pl.Series) -> pl.Series:
    """``texts`` as a polars String series (no copy when it already is one)."""
    if isinstance(texts, pl.Series):
        return texts.cast(pl.String)
    return pl.Series("text", list(texts), dtype=pl.String)


def normalize_texts(texts: Sequence[str | None] | pl.Series) -> pl.Series:
    """The normalised form of each text (NULL becomes the empty string)."""
    s = as_series(texts).fill_null("")
    # NFKC is the identity on ASCII; running it only where needed halves the cost.
    non_ascii = np.flatnonzero((s.str.len_bytes() != s.str.len_chars()).to_numpy())
    if len(non_ascii):
        s = s.scatter(non_ascii, s.gather(non_ascii).str.normalize("NFKC"))
    s = s.str.to_lowercase()
    s = s.str.replace_all(r"\s+", " ")
    # One pass each suffices: the space a match consumes is put back (checked against a
    # second pass on 200k random punctuation strings).
    s = s.str.replace_all(_PUNCT_BEFORE_SPACE, "$1").str.replace_all(_PUNCT_AFTER_SPACE, "$1")
    return s.str.replace_all(r"\s+", " ").str.strip_chars(" ")


def normalize_text(text: str) -> str:
    """The normalised form of one text (see the module docstring)."""
    return normalize_texts([text])[0]


def exact_pairs(
    texts: Sequence[str | None] | pl.Series, normalized: pl.Series | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` that link each text to the first text with the same normal form.

    A star per group is enough: clusters are connected components. Empty texts are never
    paired (there is nothing to compare). ``normalized`` skips normalising again.
    """
    norm = normalize_texts(texts) if normalized is None else normalized
    df = pl.DataFrame({"norm": norm}).with_row_index("i")
    df = df.filter(pl.col("norm") != "")
    first = df.group_by("norm").agg(pl.col("i").min().alias("first"))
    edges = df.join(first, on="norm").filter(pl.col("i") != pl.col("first"))
    return (
        edges["first"].to_numpy().astype(np.int64),
        edges["i"].to_numpy().astype(np.int64),
    )
