"""The guard in process, around a small Starlette app whose routes fail on purpose: what reaches a client
when a route breaks, and what reaches the log. (The real service runs it in tests/test_service.py; a route
that breaks cannot be made to order there.)"""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from service.guard import Guard


async def _boom(request):
    raise RuntimeError("secret path /srv/app/weights.pt exploded")


async def _plain_500(request):
    return PlainTextResponse("Traceback (most recent call last): ...", status_code=500)


async def _busy(request):
    return Response('{"error": "no model is being served yet"}', 503, media_type="application/json")


async def _echo(request):
    return Response(await request.body())


@pytest.fixture
def client() -> TestClient:
    app = Starlette(
        routes=[
            Route("/boom", _boom),
            Route("/plain", _plain_500),
            Route("/busy", _busy),
            Route("/echo", _echo, methods=["POST"]),
        ]
    )
    return TestClient(Guard(app, max_body_bytes=1000), raise_server_exceptions=False)


def test_a_route_that_raises_is_a_500_with_a_request_id_that_the_log_carries(client, caplog):
    with caplog.at_level(logging.ERROR, logger="mindtrace.service"):
        r = client.get("/boom")
    body = r.json()
    assert r.status_code == 500 and set(body) == {"error", "request_id"}
    assert "secret" not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text
    logged = [rec for rec in caplog.records if body["request_id"] in rec.getMessage()]
    assert any(rec.exc_info and "exploded" in str(rec.exc_info[1]) for rec in logged)  # the traceback


def test_a_frameworks_500_body_is_replaced_and_logged(client, caplog):
    with caplog.at_level(logging.ERROR, logger="mindtrace.service"):
        r = client.get("/plain")
    assert r.status_code == 500 and "Traceback" not in r.text
    assert any(r.json()["request_id"] in rec.getMessage() and "Traceback" in rec.getMessage()
               for rec in caplog.records)  # fmt: skip


def test_a_deliberate_503_keeps_its_message(client):
    r = client.get("/busy")
    assert r.status_code == 503 and r.json() == {"error": "no model is being served yet"}


@pytest.mark.parametrize("size", [1001, 50_000])
def test_a_body_over_the_limit_is_read_to_its_end_and_refused(client, size):
    r = client.post("/echo", content=b"x" * size)
    assert r.status_code == 413 and "limit of 1,000 bytes" in r.json()["error"]
    streamed = client.post("/echo", content=(b"y" * 100 for _ in range(size // 100 + 1)))
    assert streamed.status_code == 413
    assert client.post("/echo", content=b"z" * 1000).content == b"z" * 1000
