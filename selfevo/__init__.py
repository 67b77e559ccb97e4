"""selfevo: build, curate, version and train on SELF data (arXiv 2310.00533)."""

from schemas.errors import UserError


class SelfevoError(UserError):
    """Root of the app layer's expected errors (evolve, eval, demo, report)."""


__all__ = ["SelfevoError"]
