"""MLink on the edge tier: budgeted multi-model serving next to the cameras, its baselines,
the model zoo it serves, and the federated client that trains links with the cloud."""
