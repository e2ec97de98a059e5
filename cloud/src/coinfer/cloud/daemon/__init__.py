"""The cloud package as one daemon: ``coinfer cloud serve --config cloud.toml``.

Users deploy the cloud tier as one thing, not one server per capability: one process (or
one Ray Serve deployment) hosts the STIP model server and the MLink aggregation service
with one token, one set of limits, ``/healthz`` and Prometheus ``/metrics``.

- :mod:`.config`: ``cloud.toml``, checked line by line before anything starts;
- :mod:`.app`: the FastAPI application composed of the configured services' routes;
- :mod:`.telemetry`: the ``coinfer_`` Prometheus metrics;
- :mod:`.ray_app`: the same application on Ray Serve (``--ray``, or a Serve config file).

Example::

    coinfer cloud serve --config samples/cloud/cloud.toml --port 8200
"""
