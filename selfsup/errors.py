"""Errors that the CLI reports as one line with exit code 2 (bad input) or 3 (a run that failed)."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message alone and exits with code 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""
