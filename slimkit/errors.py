"""Errors that reach a user as one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from a user: an unknown name, a bad option, a missing or corrupt file.

    The CLI prints ``str(error)`` on one line and exits with code 2, no traceback.
    The message says what is wrong and what would be right.
    """


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
