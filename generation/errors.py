"""Errors of the generation layer (backends, templates, teachers, the ledger, collection)."""

from schemas.errors import UserError


class GenerationError(UserError):
    """Root of generation's expected errors: bad model spec, unreachable server, bad template."""
