"""coinfer.edge: the edge gateway tier.

Multi-stream ingest, packet gating and decoding, heavy models, the server side of InFi,
the MLink scheduler, the split tail and the evolution service live here as they are
built (see the README's capability map).
"""
