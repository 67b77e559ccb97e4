"""The code version (defined in ``schemas.version`` so the trainer shares it)."""

from schemas.version import code_version

__all__ = ["code_version"]
