"""``metrics_route``: a service's Prometheus registry at /metrics, behind its token."""

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from coinfer.sdk.service import ServiceError, ThreadedServer, create_service_app, metrics_route


def _get(url: str, token: str | None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers["content-type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read().decode()


def test_metrics_are_served_in_the_text_format_only_with_the_token():
    registry = CollectorRegistry()
    served = Counter("coinfer_example_requests", "requests served", registry=registry)
    app, authorize = create_service_app("metrics check", ServiceError, "tok")
    metrics_route(app, authorize, registry)
    served.inc(3)
    with ThreadedServer(app, name="the metrics server") as running:
        status, kind, text = _get(f"{running.url}/metrics", "tok")
        assert status == 200 and kind.startswith("text/plain")
        assert "coinfer_example_requests_total 3.0" in text
        for token in (None, "wrong"):
            status, _, text = _get(f"{running.url}/metrics", token)
            assert status == 401 and "missing or wrong bearer token" in text


def test_the_metrics_route_is_not_listed_in_the_schema():
    app, authorize = create_service_app("metrics check", ServiceError, "tok")
    metrics_route(app, authorize, CollectorRegistry())
    assert "/metrics" not in app.openapi()["paths"]
