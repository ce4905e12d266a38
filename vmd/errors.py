"""Errors a user can cause and fix; the CLI prints them as one line and exits 2."""


class VmdError(Exception):
    """Base class for every user-facing error of the library."""


class ConfigError(VmdError):
    """A preset, config file or override is unknown, mistyped or out of range."""


class CheckpointError(VmdError):
    """A run directory is missing, partial, corrupt or does not match its config."""


class DataError(VmdError):
    """Input data (a file, a cache) cannot be read or is malformed."""


class TrainingDiverged(VmdError):
    """The loss became NaN or infinite; the last checkpoint is kept."""
