"""End to end: the local exchange (Binance's real BTCUSDT depth diffs of 2024-08-08, and USD-M futures) → ccxt.pro →
market_feed (its ``books`` and ``derivatives`` sections: services/market_feed/books.py) → partition streams →
alert_engine → alerts. The book rule fires exactly at the published snapshots where its condition holds (thinned by
its cooldown); the funding rule once."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings as EngineSettings
from shared import streams
from shared.book_messages import BookSnapshot
from shared.bus import FIELD
from shared.partitions import partition_of
from tests.integration.market_feed.book_sim import capture_exchange
from tests.support.alerts import read_alerts
from tests.integration.market_feed.helpers import live_settings, running_feed

pytestmark = pytest.mark.timeout(120)
EX, SYM, FUT = "binance", "BTC/USDT", ("binanceusdm", "BTC/USDT:USDT")


async def test_book_and_funding_alerts_from_the_exchange_through_market_feed(redis, tmp_path):
    async with capture_exchange(speed=15) as sim:
        settings = live_settings(sim, books=[{
            "symbols": [SYM], "ws_url": sim.ws_url, "rest_url": sim.rest_url, "publish_every_ms": 100, "top_n": 10,
            "bands_bps": [5, 10, 25]}], derivatives=[{
                "exchange": FUT[0], "symbols": [FUT[1]], "ws_url": sim.futures_ws_url,
                "rest_url": sim.futures_rest_url, "open_interest_every_s": 0.2}])
        async with running_feed(settings, redis) as app:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 40
            while True:
                fields = app.status()
                if (fields.get(f"{EX}|{SYM}|book.published", 0) >= 40
                        and fields.get(f"{FUT[0]}|{FUT[1]}|funding.messages", 0) >= 3):
                    break
                assert loop.time() < deadline, f"no 40 snapshots and 3 funding readings within 40 s: {fields}"
                await asyncio.sleep(0.05)

    entries = await redis.xrange(streams.part_books(partition_of(EX, SYM, 16)))
    snaps = [s for _, f in entries if (s := BookSnapshot.decode(f[FIELD])).symbol == SYM]
    values = sorted(b.imbalance for s in snaps for b in s.bands if b.bps == 5 and b.imbalance is not None)
    level = values[len(values) // 2]
    (tmp_path / "rules.yaml").write_text(f"""
rules:
  - name: book_bid_heavy
    exchange: {EX}
    symbols: [{SYM}]
    frequency: every_time
    cooldown: 2s
    condition: {{left: {{imbalance: 5}}, op: greater_than, right: "{level}"}}  # quoted: YAML floats keep 17 digits
  - name: funding_seen
    exchange: {FUT[0]}
    symbols: ["{FUT[1]}"]
    frequency: once
    condition: {{left: mark_price, op: greater_than, right: 0}}
""")
    engine = AlertEngineApp(EngineSettings(rules_file=tmp_path / "rules.yaml", consumer_name="e2e",
                                           redis_url="redis://unused", block_ms=20, clock="exchange"), redis)
    await engine.drain()
    alerts = await read_alerts(redis)

    want, until = [], None
    for s in snaps:  # independent: the published figure, the rule's threshold and a 2 s cooldown in exchange time
        band = next(b for b in s.bands if b.bps == 5)
        if band.imbalance is not None and band.imbalance > level and (until is None or s.ts >= until):
            want.append(s.ts)
            until = s.ts + 2000
    assert [a.ts for a in alerts if a.rule == "book_bid_heavy"] == want and len(want) >= 3
    funding = [a for a in alerts if a.rule == "funding_seen"]
    assert len(funding) == 1 and funding[0].symbol == FUT[1] and funding[0].price > Decimal(0)


async def test_book_tasks_follow_the_pairs_the_replica_serves(redis):
    """A pair this replica does not serve (its partition is another's) gets no feed; once served, it does; when it
    is handed back, its feed stops."""
    from services.market_feed.books import BookTasks

    served: set[tuple[str, str]] = set()
    async with capture_exchange(speed=15) as sim:
        settings = live_settings(sim, books=[{"symbols": [SYM], "ws_url": sim.ws_url, "rest_url": sim.rest_url,
                                              "walls": False}])
        tasks = BookTasks(settings, redis, serves=lambda ex, sym: (ex, sym) in served, recheck_s=0.05)
        stop = asyncio.Event()
        run = asyncio.create_task(tasks.run(stop))
        try:
            await asyncio.sleep(0.3)
            assert tasks.feeds == {}
            served.add((EX, SYM))
            for _ in range(400):
                if tasks.health_fields().get(f"{EX}|{SYM}|book.published", 0) >= 3:
                    break
                await asyncio.sleep(0.05)
            assert tasks.health_fields()[f"{EX}|{SYM}|book.published"] >= 3
            served.clear()
            for _ in range(200):
                if not tasks.feeds:
                    break
                await asyncio.sleep(0.05)
            assert tasks.feeds == {}
        finally:
            stop.set()
            await asyncio.wait_for(run, 15)
