"""The ``coinfer`` command line: one entry point, one command group per capability.

The sdk owns the catalogue of commands (:mod:`coinfer.sdk.cli.registry`), the parser and
the shared flags (:mod:`coinfer.sdk.cli.flags`) and the report format
(:mod:`coinfer.sdk.cli.report`); each distribution registers the modules behind its
commands as entry points, so this package imports no tier.
"""

from coinfer.sdk.cli.main import main

__all__ = ["main"]
