"""The ``coinfer`` command line: one entry point, one sub-command per capability.

This is the application layer. It is the only part of :mod:`coinfer.sdk` that reaches
into the tiers, and it does so lazily: each sub-command's module is imported only when
that sub-command runs, so ``coinfer --help`` starts in a fraction of a second.
"""

from coinfer.sdk.cli.main import main

__all__ = ["main"]
