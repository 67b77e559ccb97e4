"""Model backends, teacher collection, filters, dedup, decontamination, answer extraction."""

from curation.errors import CurationError

__all__ = ["CurationError"]
