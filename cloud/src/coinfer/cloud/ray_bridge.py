"""Serve a coinfer FastAPI app from a Ray Serve deployment.

A Serve deployment answers each HTTP request in its ``__call__``; coinfer's services are
ASGI apps that carry their own token check, limits and error answers. Passing the request
through the app unchanged, rather than re-declaring routes on the deployment, keeps a
service's behaviour the same behind Serve's proxy as behind uvicorn. Starlette (which Ray
Serve and FastAPI both bring) is imported inside the function.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

__all__ = ["forward"]


async def forward(app: Any, request: Any) -> Any:
    """Run the Starlette ``request`` Serve handed a replica through the ASGI ``app`` and return
    the app's whole answer as a Starlette ``Response`` (status, headers and body; the length is
    set again by the response)."""
    from starlette.responses import Response

    messages: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    await app(request.scope, request.receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    headers = {key.decode(): value.decode() for key, value in start.get("headers", [])
               if key.lower() != b"content-length"}
    return Response(body, status_code=start["status"], headers=headers)
