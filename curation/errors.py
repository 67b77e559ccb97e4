"""Errors of the curation layer (filters, dedup, decontamination, selection)."""

from schemas.errors import UserError


class CurationError(UserError):
    """Root of curation's expected errors: bad step, bad selection, missing benchmark file."""
