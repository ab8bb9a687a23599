"""`sentinel watch` (sentinel.watch) through the client on a real redis and a real API server."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pandas as pd
from rich.console import Console

from sentinel.client import SentinelClient
from sentinel.watch import WatchView, run_watch
from services.api.app import ApiApp
from services.api.settings import Settings
from shared import streams
from shared.bus import Bus
from shared.runtime import connect
from shared.schemas import Alert, Candle, Ticker, pack
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from tests.support.candles import candles_stream, live_stream

EX, SYM, TF = "sim", "BTC/USDT", "1m"


def candle(i: int, closed: bool) -> Candle:
    p = Decimal("60000.5") + i * 3
    return Candle(exchange=EX, symbol=SYM, timeframe=TF, ts=i * 60_000, open=p, high=p + 5, low=p - 2, close=p + 1,
                  volume=Decimal("2.5") + i, buy_volume=Decimal("0.25") * i, sell_volume=Decimal("1.5"),
                  closed=closed)


async def test_watch_shows_live_candle_cvd_rules_and_alerts(redis_url, redis):
    await redis.hset(streams.part_rule_state(partition_of(EX, SYM, DEFAULT_PARTITIONS)), "fp", pack({"rule": "btc_up", "exchange": EX, "symbol": SYM,
                                                     "timeframe": TF, "state": "firing", "last_fired": 60_000}))
    server_redis = connect(redis_url)
    api = ApiApp(Settings(port=0, shutdown_grace_s=1), server_redis)
    stop_api = asyncio.Event()
    api_task = asyncio.create_task(api.run(stop_api))
    await asyncio.wait_for(api.started.wait(), 10)
    view = WatchView([(EX, SYM, TF)])
    stop = asyncio.Event()
    console = Console(record=True, width=220, force_terminal=False)
    client = SentinelClient(redis_url, api_url=api.url)
    task = asyncio.create_task(run_watch(client, view, stop, console=console, refresh_s=0.05, rules_every_s=0.1))
    bus = Bus(redis)
    closed = [candle(i, True) for i in range(4)]
    while view.status != "live":
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # the subscription is confirmed just after the status flips
    for c in closed:
        await bus.publish(candles_stream(EX, SYM, TF), c.encode(), channel=streams.channel_candles(EX, SYM, TF))
    await bus.publish(live_stream(EX, SYM), candle(4, False).encode(),
                      channel=streams.channel_candles_live(EX, SYM, TF))
    await redis.publish(streams.channel_tickers(EX, SYM),
                        Ticker(exchange=EX, symbol=SYM, ts=5, last=Decimal("60013.25")).encode())
    alert = Alert(id="a", rule="btc_up", exchange=EX, symbol=SYM, timeframe=TF, ts=180_000, fired_at=240_000,
                  price=Decimal("60010.5"), message="BTC up we go")
    await bus.publish(streams.part_alerts(partition_of(EX, SYM, DEFAULT_PARTITIONS)), alert.encode(),
                      channel=streams.CHANNEL_ALERTS)
    for _ in range(100):
        if view.alerts and view.rules and 4 in [c.ts // 60_000 for c in view.live.values()] and view.tickers:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    stop.set()
    await task
    await client.aclose()
    stop_api.set()
    await api_task
    await server_redis.aclose()

    deltas = pd.Series([float(c.buy_volume - c.sell_volume) for c in [*closed, candle(4, False)]])
    assert view.cvd[(EX, SYM, TF)] == sum((c.delta for c in closed), Decimal(0))
    text = console.export_text()
    screen = text[text.rfind("market"):]  # the last frame
    assert "60013.25" in screen  # last price from the ticker
    assert str(candle(4, False).open) in screen and str(candle(4, False).high) in screen
    assert f"{deltas.sum():g}" in screen  # CVD including the in-progress candle
    assert "btc_up" in screen and "firing" in screen and "BTC up we go" in screen


def test_watch_command_discovers_series_and_survives_a_missing_api(redis_url):
    import redis as redis_sync
    import typer
    from typer.testing import CliRunner

    from sentinel.watch import watch_command

    client = redis_sync.Redis.from_url(redis_url)
    client.flushall()
    client.sadd(streams.part_candle_registry(partition_of("sim", "ETH/USDT", DEFAULT_PARTITIONS)), "sim|ETH/USDT|1m",
                "sim|ETH/USDT|5m")
    client.close()
    app = typer.Typer()
    app.command()(watch_command)
    result = CliRunner().invoke(app, ["--redis-url", redis_url, "--api", "http://127.0.0.1:1", "--duration", "1.5"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "sim ETH/USDT 1m" in result.output and "5m" not in result.output.split("rules")[0]
    assert "API unreachable" in result.output


async def test_watch_shows_the_order_book_and_the_perpetual(redis_url, redis):
    """A real book (Binance's BTCUSDT REST snapshot of the 2024-08-08 capture, through market_feed's PairBook) and a
    perpetual's readings, published on their channels: the view shows the top levels, each band's imbalance (as
    computed independently here from the same levels) and the futures figures."""
    from services.market_feed.book_core import BookView, PairBook
    from shared.derivs_messages import FundingRate, Liquidation, OpenInterest
    from shared.orderbook.book import parse_levels
    from tests.unit.orderbook.captures import binance_capture

    rest = next(f for f in binance_capture("20240808") if "lastUpdateId" in f)
    bids, asks = parse_levels(rest["bids"]), parse_levels(rest["asks"])
    snap = PairBook("binance", "BTC/USDT").snapshot(BookView(bids, asks, rest["lastUpdateId"], 1723161255000))
    mid = (bids[0][0] + asks[0][0]) / 2
    perp = ("binanceusdm", "BTC/USDT:USDT")
    view = WatchView([("binance", "BTC/USDT", "1m")], perps=[perp])
    stop = asyncio.Event()
    console = Console(record=True, width=260, force_terminal=False)
    client = SentinelClient(redis_url)
    task = asyncio.create_task(run_watch(client, view, stop, console=console, refresh_s=0.05))
    while view.status != "live":
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    await redis.publish(streams.channel_books("binance", "BTC/USDT"), snap.encode())
    readings = [FundingRate(exchange=perp[0], symbol=perp[1], ts=1723161266000, mark_price=Decimal("61829.00"),
                            index_price=Decimal("61828.58"), funding_rate=Decimal("0.00010000"),
                            next_funding_ts=1723161600000),
                OpenInterest(exchange=perp[0], symbol=perp[1], ts=1723161267511, amount=Decimal("79999.694")),
                *(Liquidation(exchange=perp[0], symbol=perp[1], ts=1723161300000 + i, side=side,
                              price=Decimal("61831.99"), amount=Decimal("0.084")) for i, side in
                  enumerate(("sell", "sell", "buy")))]
    for r in readings:
        await redis.publish(streams.channel_derivs(*perp), r.encode())
    for _ in range(100):
        if view.books and len(view.futures.get(perp, {}).get("liquidations", ())) == 3:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    stop.set()
    await task
    await client.aclose()

    screen = console.export_text()
    screen = screen[screen.rfind("order books"):]
    assert f"{bids[0][1].normalize()} @ {bids[0][0].normalize()}" in screen.replace("61837.63000000", "61837.63")
    for bps in (10, 25, 50):  # independent: the imbalance of the band from the snapshot's own levels
        lo, hi = mid * (1 - Decimal(bps) / 10000), mid * (1 + Decimal(bps) / 10000)
        b = sum((s for p, s in bids if p >= lo), Decimal(0))
        a = sum((s for p, s in asks if p <= hi), Decimal(0))
        assert f"±{bps} bps" in screen and f"{(b - a) / (b + a):.3g}" in screen
    assert "61829" in screen and "79999.694" in screen and "0.0001" in screen
    assert "3: 0.168 / 0.084" in screen  # liquidations of 5 min: longs (sell orders) / shorts
