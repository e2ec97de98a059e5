"""``python -m coinfer.sdk.cli`` is the same as the ``coinfer`` console script."""

import sys

from coinfer.sdk.cli.main import main

sys.exit(main())
