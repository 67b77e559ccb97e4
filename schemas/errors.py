"""The one base class of user-facing errors.

Every package's root exception (``CorpusError``, ``CurationError``, ``TrainerError``,
``SelfevoError``) subclasses :class:`UserError`; the CLI turns it into a one-line message and
a non-zero exit, and re-raises it under ``--debug``.
"""


class UserError(Exception):
    """An expected failure caused by input or environment; its message says what to do next."""


class Waiting(UserError):
    """Work handed to an outside service (a provider's batch) is not finished yet.

    Not a failure: the command stops with this message (what is waiting and how to go on),
    its run is marked ``waiting``, and running it again continues where it stopped. The
    CLI prints the message without "Error:" and exits with :attr:`exit_code`.
    """

    exit_code = 3
