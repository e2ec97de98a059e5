"""The edge side of split inference: the tail service (:mod:`coinfer.edge.split.service`)."""

from coinfer.edge.split.service import (
    SplitServer,
    SplitServiceError,
    SplitServiceOptions,
    SplitTailService,
    create_app,
)

__all__ = ["SplitServer", "SplitServiceError", "SplitServiceOptions", "SplitTailService", "create_app"]
