"""Deterministic workloads for the benchmarks: ``coinfer data scenes`` (multi-camera video
with real detector results) lives in :mod:`coinfer.bench.data.scenes`."""
