"""The one base class of user-facing errors.

Every package's root exception (``CorpusError``, ``CurationError``, ``TrainerError``,
``SelfevoError``) subclasses :class:`UserError`; the CLI turns it into a one-line message and
a non-zero exit, and re-raises it under ``--debug``.
"""


class UserError(Exception):
    """An expected failure caused by input or environment; its message says what to do next."""
