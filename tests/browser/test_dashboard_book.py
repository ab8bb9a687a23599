"""The dashboard's order book & futures panel in a real headless Chromium, on the real pipeline: the local exchange
replaying Binance's real BTCUSDT depth diffs (and its USD-M perpetual) → ccxt.pro → market_feed (books, derivatives)
→ API. The panel shows the top levels and imbalance of a snapshot market_feed published (read back from its
partition stream), live, and the perpetual's funding; a screenshot is written for a human to look at."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from pathlib import Path

import pytest

from services.api.app import STATIC_DIR, ApiApp
from services.api.settings import Settings as ApiSettings
from services.candle_builder.app import CandleBuilderApp
from services.candle_builder.settings import Settings as BuilderSettings
from services.market_feed.app import MarketFeedApp
from shared import streams
from shared.book_messages import BookSnapshot
from shared.bus import FIELD
from shared.derivs_messages import FundingRate
from shared.partitions import partition_of
from shared.runtime import connect
from shared.schemas import unpack
from tests.integration.market_feed.book_sim import capture_exchange
from tests.integration.market_feed.helpers import live_settings
from tests.support.candles import registered

SCREENSHOTS = Path(os.environ.get("SENTINEL_SCREENSHOTS", "bench/results"))
EX, SYM, FUT = "binance", "BTC/USDT", ("binanceusdm", "BTC/USDT:USDT")
pytestmark = pytest.mark.timeout(120)


async def _until(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def _published(redis) -> dict[int, BookSnapshot]:
    entries = await redis.xrange(streams.part_books(partition_of(EX, SYM, 16)))
    snaps = (BookSnapshot.decode(f[FIELD]) for _, f in entries)
    return {s.ts: s for s in snaps if s.symbol == SYM}


async def test_the_book_panel_shows_the_published_book_and_the_perpetual(redis_url, redis, tmp_path, browser):
    if not (STATIC_DIR / "index.html").exists():
        pytest.fail("dashboard not built: run `npm ci && npm run build` in web/")
    client = connect(redis_url)
    common = {"redis_url": redis_url, "data_dir": tmp_path}
    async with capture_exchange(speed=10) as sim:
        feed = live_settings(sim, **common, books=[{
            "symbols": [SYM], "ws_url": sim.ws_url, "rest_url": sim.rest_url, "publish_every_ms": 250, "top_n": 20,
            "bands_bps": [5, 10, 25]}], derivatives=[{
                "exchange": FUT[0], "symbols": [FUT[1]], "ws_url": sim.futures_ws_url,
                "rest_url": sim.futures_rest_url, "open_interest_every_s": 0.5}])
        apps = {"market_feed": MarketFeedApp(feed, client),
                "candle_builder": CandleBuilderApp(BuilderSettings(**common), client),
                "api": ApiApp(ApiSettings(port=0, shutdown_grace_s=1, **common), client)}
        stop = asyncio.Event()
        tasks = [asyncio.create_task(app.run(stop), name=name) for name, app in apps.items()]
        try:
            api = apps["api"]
            await asyncio.wait_for(api.started.wait(), 15)

            async def candles_and_books() -> bool:
                return bool(await registered(redis)) and len(await _published(redis)) >= 5

            await _until(candles_and_books, 60, "a 1m candle and 5 book snapshots")
            page = await browser.new_page(viewport={"width": 1400, "height": 1150})
            await page.goto(f"http://127.0.0.1:{api.port}/?series={EX}|{SYM}|1m")
            await page.wait_for_selector("#book-panel:not([hidden]) table.levels", timeout=20_000)
            first_ts = int(await page.get_attribute("#book-panel", "data-ts"))
            # live: the panel moves on to later snapshots without a reload
            await _until(lambda: _later(page, first_ts), 30, "a live book update in the page")
            await page.wait_for_selector(".perp[data-funding]:not([data-funding=''])", timeout=20_000)
            shown = await page.evaluate("""() => ({
                ts: document.querySelector('#book-panel').dataset.ts,
                rows: [...document.querySelectorAll('table.levels tbody tr')].map(
                    (tr) => [...tr.children].map((td) => td.textContent)),
                gauges: [...document.querySelectorAll('.gauge')].map((g) => [g.dataset.bps, g.dataset.imbalance]),
                funding: document.querySelector('.perp').dataset.funding,
            })""")
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await page.locator("#book-panel").scroll_into_view_if_needed()
            await page.screenshot(path=str(SCREENSHOTS / "dashboard_book.png"), full_page=True)
            await page.close()
        finally:
            stop.set()
            done, pending = await asyncio.wait(tasks, timeout=15)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    snap = (await _published(redis))[int(shown["ts"])]  # the snapshot the page shows, as market_feed published it
    assert len(shown["rows"]) == 10
    for row, bid, ask in zip(shown["rows"], snap.bids, snap.asks, strict=False):
        assert [Decimal(x) for x in row] == [bid[1], bid[0], ask[0], ask[1]]
    assert [(Decimal(b), Decimal(i) if i else None) for b, i in shown["gauges"]] == [
        (b.bps, b.imbalance) for b in snap.bands]
    fundings = [m for _, f in await redis.xrange(streams.part_derivs(partition_of(*FUT, 16)))
                if (m := unpack(f[FIELD])).get("k") == "funding"]
    assert Decimal(shown["funding"]) in {FundingRate.from_msg(m).funding_rate for m in fundings}
    await client.aclose()


async def _later(page, ts: int) -> bool:
    return int(await page.get_attribute("#book-panel", "data-ts") or 0) > ts
