"""Errors that mean "the user gave us something wrong" (exit code 2).

Everything else that escapes is a bug or an environment failure (exit code 1).
Messages are one paragraph that names the field, file or line at fault.
"""


class UserInputError(Exception):
    """Invalid input: config values, data files, model paths, arguments."""


class ConfigError(UserInputError):
    """A config file or override is invalid."""


class DataError(UserInputError):
    """A prompt or preference file is missing or malformed."""


class RunDirError(UserInputError):
    """A run directory cannot be used (missing, or made with another config)."""
