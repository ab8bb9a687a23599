"""Issue 19 defect 11 (auth): with SENTINEL_API_TOKEN set, every endpoint but /health needs the token, the OpenAPI
document included; the pages (dashboard, /docs, /redoc) load without it but are shipped with the package (no CDN) and
fetch nothing without it."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from services.api.app import STATIC_DIR, ApiApp, create_app
from services.api.settings import Settings
from shared.runtime import connect

FULL, READ = "full-token", "read-token"


@contextlib.asynccontextmanager
async def serving(redis_url: str, **settings) -> AsyncIterator[ApiApp]:
    """The API served by uvicorn on a free port (``ApiApp``, as `sentinel api` runs it) until the block ends."""
    client = connect(redis_url)
    api = ApiApp(Settings(port=0, shutdown_grace_s=1, services=[], **settings), client)
    stop = asyncio.Event()
    task = asyncio.create_task(api.run(stop))
    await asyncio.wait_for(api.started.wait(), 10)
    try:
        yield api
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await client.aclose()


@pytest.fixture
def app(redis):
    return create_app(Settings(api_token=FULL, api_read_token=READ, services=[]), redis)


async def test_openapi_and_data_need_the_token_pages_do_not(app):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as anon, \
            httpx.AsyncClient(transport=transport, base_url="http://test",
                              headers={"Authorization": f"Bearer {READ}"}) as reader:
        for path in ("/openapi.json", "/series", "/alerts", "/alerts/history", "/rules", "/notifications"):
            assert (await anon.get(path)).status_code == 401, path
            assert (await reader.get(path)).status_code == 200, path
        document = (await reader.get("/openapi.json")).json()
        assert "/candles/{exchange}/{symbol}/{timeframe}" in document["paths"]
        assert (await anon.get("/health")).status_code in (200, 503)  # no token needed, by design

        for page, script in (("/docs", "/docs.js"), ("/redoc", "/docs.js"), ("/", "app.js")):
            r = await anon.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
            sources = re.findall(r'(?:src|href)="([^"]+)"', r.text)
            assert script in sources, (page, sources)
            assert not [s for s in sources if "//" in s], f"{page} loads from another host: {sources}"
            for source in sources:  # every file the page names is shipped and served
                assert (await anon.get(source if source.startswith("/") else f"/{source}")).status_code == 200
        # the viewers the page loads are shipped, and do not reach for a CDN either
        docs_js = (await anon.get("/docs.js")).text
        for vendor in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            assert f"/vendor/{vendor}" in docs_js and (await anon.get(f"/vendor/{vendor}")).status_code == 200
        for vendor in ("swagger-ui-bundle.js", "redoc.standalone.js"):
            text = (STATIC_DIR / "vendor" / vendor).read_text(errors="replace")
            assert "cdn.jsdelivr" not in text and "unpkg.com" not in text
