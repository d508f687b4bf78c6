"""`convvae serve`'s request limits (convvae.serving.RequestLimits) as ASGI middleware, driven
in process: a body that arrives too slowly is answered 408 and never reaches the model; a client
that leaves mid-body gets nothing and reaches nothing."""

import asyncio
import json

from convvae.serving import RequestLimits

SCOPE = {
    "type": "http",
    "method": "POST",
    "path": "/invocations",
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"20")],
}


def serve_one(receive_messages, read_timeout_s: float = 0.2) -> tuple[list[dict], list[str]]:
    """One request through the limits in front of an app that records whether it ran; the
    messages sent back and the app's calls."""
    app_calls: list[str] = []
    sent: list[dict] = []

    async def app(scope, receive, send):
        app_calls.append((await receive())["body"].decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message):
        sent.append(message)

    limits = RequestLimits(app, max_bytes=1000, read_timeout_s=read_timeout_s)
    asyncio.run(limits(SCOPE, receive_messages, send))
    return sent, app_calls


def test_a_body_sent_too_slowly_is_answered_408_without_reaching_the_model():
    parts = iter([b'{"inputs": ', None])  # the second part never comes

    async def receive():
        part = next(parts)
        if part is None:
            await asyncio.sleep(3600)
        return {"type": "http.request", "body": part, "more_body": True}

    sent, app_calls = serve_one(receive)
    assert sent[0]["status"] == 408 and not app_calls
    assert "body not received in 0.2 s" in json.loads(sent[1]["body"])["message"]


def test_a_body_in_time_reaches_the_model_whole():
    parts = iter([b'{"inputs": ', b"[1, 2]}"])

    async def receive():
        await asyncio.sleep(0.01)
        part = next(parts)
        return {"type": "http.request", "body": part, "more_body": part != b"[1, 2]}"}

    sent, app_calls = serve_one(receive)
    assert sent[0]["status"] == 200 and app_calls == ['{"inputs": [1, 2]}']


def test_a_client_that_leaves_mid_body_gets_no_reply_and_reaches_nothing():
    messages = iter(
        [
            {"type": "http.request", "body": b'{"inputs": ', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive():
        return next(messages)

    sent, app_calls = serve_one(receive)
    assert sent == [] and app_calls == []
