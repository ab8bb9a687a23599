"""The dashboard's status strip in a real headless Chromium on the real pipeline: it reads GET /status, and for the
same readings it shows exactly what `sentinel watch` shows (the same figures, the same rates)."""

from __future__ import annotations

import httpx

from sentinel.watch import PipelineFigures
from tests.browser.test_dashboard import _until, pipeline  # noqa: F401  (the fixture)


async def test_status_strip_shows_what_watch_shows(pipeline, browser):  # noqa: F811
    api = pipeline
    async with httpx.AsyncClient(base_url=api.url) as http:
        async def traded() -> bool:
            return (await http.get("/status")).json()["figures"]["trades_in"] > 0
        await _until(traded, 60, "trades counted in /status")
        page = await browser.new_page()
        await page.goto(f"{api.url}/?status=1")
        await page.wait_for_function(
            "() => (JSON.parse(document.getElementById('status-strip').dataset.figures || '{}').trades_in || 0) > 0",
            timeout=30_000)
        shown = await page.evaluate("() => JSON.parse(document.getElementById('status-strip').dataset.figures)")
        later = (await http.get("/status")).json()
    assert 0 < shown["trades_in"] <= later["figures"]["trades_in"]
    assert set(shown) == set(later["figures"])
    # the same two readings through the page's strip and watch's: the same line
    second = {**later, "ts": later["ts"] + 2000,
              "figures": {**later["figures"], "trades_in": later["figures"]["trades_in"] + 4321}}
    js_line = await page.evaluate("""([a, b]) => {
        const strip = new window.sentinelDashboard.statusStrip.constructor();
        strip.update(a); strip.update(b); return strip.line(); }""", [later, second])
    watch = PipelineFigures()
    watch.update(later)
    watch.update(second)
    assert js_line == watch.line()
    assert "(2,160.5/s)" in js_line
    text = await page.inner_text("#status-strip")
    assert text.startswith("trades ") and "replicas" in text, text
