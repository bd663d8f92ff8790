"""Errors a user can cause. Anything else is a bug and aborts all ranks with a traceback."""


class UserError(Exception):
    """Bad input (file, tensor, flag): reported as one clear message, exit status 1."""
