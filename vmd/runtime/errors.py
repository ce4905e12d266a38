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


SHOWN = 80  # the most characters of a user's value that a message echoes


def shown(value, limit: int = SHOWN) -> str:
    """``repr(value)`` for a message, at most about ``limit`` characters: a long string is cut and says
    how long it was; a large or deeply nested structure is summarised level by level (``reprlib``) before
    it is cut, so echoing a value never walks more of it than it shows."""
    import reprlib

    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value):,} characters)"
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxtuple, short.maxstring, short.maxother = 3, 4, 4, 4, 40, 40
    text = short.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
