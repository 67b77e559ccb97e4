"""Errors of the curation layer (backends, collection, filters)."""

from schemas.errors import UserError


class CurationError(UserError):
    """Root of curation's expected errors: bad model spec, bad step, unreachable server."""
