"""Errors a user can act on: the CLI prints them as one line and exits non-zero, no traceback."""


class MedalignError(Exception):
    """Bad input the user can fix; the message names the thing that is wrong."""

    exit_code = 1


class ConfigError(MedalignError):
    exit_code = 2


class DataError(MedalignError):
    """A manifest or image that cannot be used as it is."""


class CheckpointError(MedalignError):
    """A weights file that does not fit the model it is loaded into."""
