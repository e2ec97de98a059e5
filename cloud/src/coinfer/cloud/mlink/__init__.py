"""MLink on the cloud tier: the federated aggregation service for link graphs."""
