"""Curation: cleaning records that exist — filters, dedup, decontamination, selection,
answer extraction and verdict parsing. Every decision is a row in the store."""

from curation.errors import CurationError

__all__ = ["CurationError"]
