"""Real local receivers for notifier tests: an aiohttp JSON webhook server and an aiosmtpd SMTP server."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class WebhookReceiver:
    """Answers the scripted ``(status, headers)`` replies first, then 200. Records every request."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)  # {"t", "status", "body", "headers"}
    port: int = 0
    delay: float = 0.0  # seconds spent before answering (before the request counts as received)
    arrived: int = 0  # requests come in, answered or not yet
    _accepted: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def delivered(self) -> list[dict]:
        """JSON bodies accepted (answered 200), a repeated Idempotency-Key counted once — as a receiver that honours
        the header (the notifier's recommendation) would process them."""
        return [r["body"] for r in self.requests if r["status"] == 200 and not r["repeat"]]

    def raw_delivered(self) -> list[dict]:
        """Every body answered 200, repeats included."""
        return [r["body"] for r in self.requests if r["status"] == 200]

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.arrived += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        status, headers = self.script.pop(0) if self.script else (200, {})
        key = request.headers.get("Idempotency-Key")
        repeat = status == 200 and key is not None and key in self._accepted
        if status == 200 and key is not None:
            self._accepted.add(key)
        body = json.loads(raw) if request.content_type == "application/json" else raw.decode()
        self.requests.append({"t": time.monotonic(), "status": status, "body": body,
                              "headers": dict(request.headers), "repeat": repeat})
        return web.Response(status=status, headers=headers, text="ok" if status == 200 else "no")


@asynccontextmanager
async def webhook_receiver(script: list[tuple[int, dict[str, str]]] | None = None,
                           delay: float = 0.0) -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(list(script or []), delay=delay)
    app = web.Application()
    app.router.add_post("/hook", receiver._handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.port = site._server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        await runner.cleanup()


@contextmanager
def smtp_server():
    """An aiosmtpd server on a free port (its own thread); yields (port, messages) with parsed email messages."""
    from aiosmtpd.controller import Controller

    messages: list[email.message.EmailMessage] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            return "250 OK"

    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, messages
    finally:
        controller.stop()


async def wait_for(pred, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


@asynccontextmanager
async def chat_api() -> AsyncIterator[tuple[int, list[dict]]]:
    """A stand-in for the Telegram Bot API / Discord webhooks: records (path, JSON body), answers success."""
    got: list[dict] = []

    async def handle(request: web.Request) -> web.Response:
        got.append({"path": request.path, "body": json.loads(await request.read())})
        return web.json_response({"ok": True, "result": {"message_id": len(got)}})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1], got
    finally:
        await runner.cleanup()
