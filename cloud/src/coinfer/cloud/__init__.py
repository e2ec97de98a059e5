"""coinfer.cloud: the cloud tier.

The STIP model server and developer tooling, MLink/evolve aggregation and Ray Serve
scale-out live here as they are built (see the README's capability map).
"""
