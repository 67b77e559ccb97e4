"""Errors of the store layer."""

from schemas.errors import UserError


class CorpusError(UserError):
    """Root of the store's expected errors (bad input, missing store, busy store)."""


class StoreBusy(CorpusError):
    """Another process holds the store for writing."""
