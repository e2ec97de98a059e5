"""coinfer.sdk: the tier-agnostic core of coinfer.

The algorithms, data types, wire format, model-artifact format and metrics live here
once; the tiers (:mod:`coinfer.device`, :mod:`coinfer.edge`, :mod:`coinfer.cloud`)
compose them with cameras, sockets, runtimes and daemons. Importing this package needs
only numpy and the standard library; heavy frameworks are imported inside the
functions that need them.
"""

from coinfer.sdk._version import __version__

__all__ = ["__version__"]
