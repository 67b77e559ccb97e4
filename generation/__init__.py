"""Generation: model backends, prompt templates, teachers, the call ledger and collection.

Everything that asks a model (or an offline teacher) for text lives here; cleaning the text
that exists is :mod:`curation`'s job. Dependencies point down: generation may use curation
(answer extraction, verdict parsing) and corpus (the store), never the app (:mod:`selfevo`).
"""

from generation.errors import GenerationError

__all__ = ["GenerationError"]
