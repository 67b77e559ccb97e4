"""The trainer's root exception."""

from __future__ import annotations

from schemas.errors import UserError


class TrainerError(UserError):
    """A training input or setup problem; the message says which file/field and what to do."""
