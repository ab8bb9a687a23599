"""market_feed's per-stream health (issue 4) reaches GET /health of the API, from a live feed through ccxt.pro."""

from __future__ import annotations

import asyncio

import httpx

from services.api.app import create_app
from services.api.settings import Settings as ApiSettings
from tests.conftest import shared_data
from tests.support.candles import trades_stream
from tests.integration.market_feed.helpers import (RECORDING, expected_trades, live_settings, local_exchange,
                                                   running_feed, wait_last_id)


async def test_health_reports_reconnects_and_backfill_per_stream(redis, redis_url):
    path = shared_data(RECORDING)
    expected = expected_trades(path)
    api = create_app(ApiSettings(redis_url=redis_url, services=["market_feed"]), redis)
    async with local_exchange(path) as sim, running_feed(live_settings(sim), redis) as app:
        await sim.wait_released(500)
        assert await sim.drop_connections() >= 1
        await wait_last_id(redis, expected[-1][0])
        live = app.live.health["binance|BTC/USDT|trades"]
        seen = (live.reconnects, live.backfilled)  # counters once every trade is in; they only grow after
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client:
            for _ in range(100):  # the heartbeat is written every 2 s
                response = await client.get("/health")
                feed = response.json()["services"]["market_feed"]
                reported = (int(feed.get("binance|BTC/USDT|trades.reconnects", 0)),
                            int(feed.get("binance|BTC/USDT|trades.backfilled", 0)))
                if reported[0] >= seen[0] and reported[1] >= seen[1]:
                    break
                await asyncio.sleep(0.1)
    assert response.status_code == 200, response.text
    assert feed["status"] == "ok"
    # The heartbeat caught up with the feed's own counters, and never reports more than the feed counted.
    assert seen[0] >= 1
    assert seen[0] <= reported[0] <= live.reconnects and seen[1] <= reported[1] <= live.backfilled
    for key in ("age_s", "msgs_per_s", "gaps"):
        assert f"binance|BTC/USDT|trades.{key}" in feed
    streams = {s["stream"]: s for s in response.json()["streams"]}
    assert streams[trades_stream("binance", "BTC/USDT")]["last_entry_age_s"] is not None
