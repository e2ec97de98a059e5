"""Evolve on the edge: the store that publishes evolved device models by hash."""
