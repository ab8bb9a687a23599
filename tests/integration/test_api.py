"""The API on a real redis-server: seeded with the shared schemas, queried with httpx, checked against pandas."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import httpx
import pandas as pd
import pytest

from services.api.app import ApiApp, ApiStartError, create_app
from services.api.settings import Settings
from shared import streams
from shared.bus import Bus
from shared.schemas import Alert, Candle, Ticker, pack
from shared.partitions import partition_of
from tests.support.candles import builder_state, tickers_stream, trades_stream
from tests.support.candles import candles_stream, publish_live, register_series

EX, SYM, TF = "binance", "BTC/USDT", "1m"
T0 = 1_723_161_240_000


def candle(i: int, *, closed: bool = True, revision: int = 0, bump: str = "0") -> Candle:
    base = Decimal(60000 + 7 * i) + Decimal(bump)
    buy = Decimal(i % 5) + Decimal("0.125")
    sell = Decimal((i * 3) % 4) + Decimal("0.5")
    return Candle(exchange=EX, symbol=SYM, timeframe=TF, ts=T0 + i * 60_000, open=base, high=base + Decimal("12.5"),
                  low=base - Decimal("3.25"), close=base + Decimal("1.1"), volume=buy + sell, buy_volume=buy,
                  sell_volume=sell, trades=10 + i, closed=closed, revision=revision)


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
def settings() -> Settings:
    return Settings(services=["candle_builder", "alert_engine"], heartbeat_max_age_s=5)


async def seed_candles(redis, n: int) -> list[Candle]:
    """n closed candles; candles 3 and 7 revised later (revision 1, different prices); one in-progress candle."""
    bus = Bus(redis)
    published = [candle(i) for i in range(n)]
    published += [candle(3, revision=1, bump="0.5"), candle(7, revision=1, bump="-2")]
    for c in published:
        await bus.publish(candles_stream(EX, SYM, TF), c.encode())
    await publish_live(redis, candle(n, closed=False))
    await register_series(redis, (EX, SYM, TF))
    return published


def expected_frame(published: list[Candle]) -> pd.DataFrame:
    """Independent: the highest revision per bucket, via pandas."""
    df = pd.DataFrame([c.model_dump() for c in published])
    df = df.sort_values(["ts", "revision"]).groupby("ts").last().reset_index()
    return df


async def test_candles_latest_revision_limit_since_and_live(redis, settings):
    published = await seed_candles(redis, 1200)  # more than one scan chunk
    expected = expected_frame(published)
    async with client_for(create_app(settings, redis)) as client:
        r = await client.get("/candles/binance/BTC-USDT/1m", params={"limit": 50})
        assert r.status_code == 200
        body = r.json()
        got = pd.DataFrame(body["candles"])
        tail = expected.tail(50)
        assert got["ts"].tolist() == tail["ts"].tolist()
        assert got["close"].tolist() == [str(x) for x in tail["close"]]  # decimals travel as strings
        assert body["live"] is None

        r = await client.get("/candles/binance/BTC%2FUSDT/1m", params={"since": T0, "limit": 10, "live": True})
        body = r.json()
        head = expected.head(10)
        assert [c["ts"] for c in body["candles"]] == head["ts"].tolist()
        by_ts = {c["ts"]: c for c in body["candles"]}
        assert by_ts[T0 + 3 * 60_000]["open"] == str(head.set_index("ts").loc[T0 + 3 * 60_000, "open"])
        assert by_ts[T0 + 3 * 60_000]["revision"] == 1 and by_ts[T0 + 7 * 60_000]["revision"] == 1
        assert body["live"]["ts"] == T0 + 1200 * 60_000 and body["live"]["closed"] is False

        r = await client.get("/candles/binance/BTC%2FUSDT/1m", params={"since": T0 + 1195 * 60_000, "limit": 100})
        assert [c["ts"] for c in r.json()["candles"]] == expected["ts"].tolist()[-5:]

        assert (await client.get("/candles/binance/BTC-USDT/7m")).status_code == 422
        r = await client.get("/candles/binance/ETH-USDT/1m")
        assert r.status_code == 200 and r.json()["candles"] == []


async def test_cvd_matches_pandas_cumsum(redis, settings):
    published = await seed_candles(redis, 30)
    expected = expected_frame(published)
    delta = expected["buy_volume"] - expected["sell_volume"]
    live = candle(30, closed=False)
    async with client_for(create_app(settings, redis)) as client:
        r = await client.get("/cvd/binance/BTC-USDT/1m", params={"limit": 1000})
    points = r.json()["points"]
    want = list(delta) + [live.buy_volume - live.sell_volume]
    cum = pd.Series(want).cumsum()
    assert [p["ts"] for p in points] == expected["ts"].tolist() + [live.ts]
    assert [Decimal(p["delta"]) for p in points] == want
    assert [Decimal(p["cvd"]) for p in points] == list(cum)


async def test_ticker_latest(redis, settings):
    bus = Bus(redis)
    for i in range(3):
        t = Ticker(exchange=EX, symbol=SYM, ts=T0 + i, bid=Decimal("100.1") + i, ask=Decimal("100.3") + i,
                   last=Decimal("100.2") + i)
        await bus.publish(tickers_stream(EX, SYM), t.encode())
    # the partition's stream is shared: a pair of the same partition (3 of 16) ticks 450 times after it
    assert tickers_stream(EX, "DOT/USDT") == tickers_stream(EX, SYM)
    dot = Ticker(exchange=EX, symbol="DOT/USDT", ts=T0, bid=Decimal("4.1"), ask=Decimal("4.2"), last=Decimal("4.1"))
    await bus.publish_many((tickers_stream(EX, SYM), dot.encode()) for _ in range(450))
    async with client_for(create_app(settings, redis)) as client:
        body = (await client.get("/ticker/binance/BTC-USDT")).json()
        assert body["ticker"]["ts"] == T0 + 2 and body["ticker"]["bid"] == "102.1"
        assert (await client.get("/ticker/binance/DOT-USDT")).json()["ticker"]["bid"] == "4.1"
        assert (await client.get("/ticker/binance/XRP-USDT")).json() == {"ticker": None}


def alert(i: int) -> Alert:
    rule = ["above", "below", "cross"][i % 3]
    symbol = ["BTC/USDT", "ETH/USDT"][i % 2]
    return Alert(id=f"a{i}", rule=rule, exchange=EX, symbol=symbol, timeframe=TF, ts=T0 + i * 60_000,
                 fired_at=T0 + (i + 1) * 60_000, price=Decimal("100.5") + i, condition=f"{rule} x")


async def test_alert_history_filters_and_cursor_pagination(redis, settings):
    bus = Bus(redis)
    alerts = [alert(i) for i in range(1300)]
    for a in alerts:  # where alert_engine writes them: the alerts stream of the pair's partition
        await bus.publish(streams.part_alerts(partition_of(a.exchange, a.symbol, 16)), a.encode())
    await redis.xadd(streams.part_alerts(0), {b"d": b"\xc1junk"})  # skipped, not fatal
    lo, hi = T0 + 100 * 60_000, T0 + 900 * 60_000
    want = [a.id for a in reversed(alerts) if a.rule == "cross" and a.symbol == "ETH/USDT" and lo <= a.fired_at <= hi]
    assert len(want) > 100
    async with client_for(create_app(settings, redis)) as client:
        got: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"rule": "cross", "symbol": "ETH-USDT", "start": lo, "end": hi, "limit": 40}
            if cursor:
                params["cursor"] = cursor
            r = await client.get("/alerts/history", params=params)
            assert r.status_code == 200
            body = r.json()
            got += [item["alert"]["id"] for item in body["items"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert got == want
        assert pages >= len(want) // 40
        first = (await client.get("/alerts/history", params={"limit": 1})).json()["items"][0]["alert"]
        assert first["id"] == "a1299" and first["price"] == str(Decimal("100.5") + 1299)
        assert (await client.get("/alerts/history", params={"cursor": "nope"})).status_code == 422


async def test_alert_states_with_cooldown_left(redis, settings):
    # the engine's format: rule state rows in the partition of their pair, cooldown key = end of cooldown in exchange
    # ms (-1 forever)
    btc, eth = partition_of(EX, SYM, 16), partition_of(EX, "ETH/USDT", 16)
    assert btc != eth
    await redis.hset(streams.part_rule_state(btc), mapping={
        "fp1": pack({"rule": "btc-above", "exchange": EX, "symbol": SYM, "timeframe": TF, "state": "firing",
                     "last_fired": T0, "last_alert_id": "a1", "since": T0 - 60_000}),
        "fp3": pack({"rule": "once", "exchange": EX, "symbol": SYM, "timeframe": TF, "state": "firing",
                     "last_fired": T0}),
        "fp4": b"\xc1",
    })
    await redis.hset(streams.part_rule_state(eth), mapping={
        "fp2": pack({"rule": "eth-below", "exchange": EX, "symbol": "ETH/USDT", "timeframe": TF,
                     "state": "inactive", "last_fired": None})})
    until = int(time.time() * 1000) + 60_000  # live: exchange time is wall time
    await redis.set(streams.part_alert_cooldown(btc, "fp1"), until, px=30 * 86_400_000)  # (outlives the cooldown)
    await redis.set(streams.part_alert_cooldown(btc, "fp3"), -1)
    async with client_for(create_app(settings, redis)) as client:
        rules = {r["fingerprint"]: r for r in (await client.get("/alerts")).json()["rules"]}
    assert set(rules) == {"fp1", "fp2", "fp3", "fp4"}
    assert rules["fp1"]["state"] == "firing" and rules["fp1"]["last_fired"] == T0
    assert 55 < rules["fp1"]["cooldown_left_s"] <= 60
    assert rules["fp1"]["next_eligible"] == until and rules["fp1"]["extra"] == {"since": T0 - 60_000}
    assert rules["fp2"]["cooldown_left_s"] == 0 and rules["fp2"]["next_eligible"] is None
    assert rules["fp2"]["symbol"] == "ETH/USDT" and rules["fp2"]["state"] == "inactive"
    assert rules["fp3"]["cooldown_forever"] is True and rules["fp3"]["next_eligible"] is None
    assert rules["fp4"]["state"] == "unknown"
    async with client_for(create_app(settings, redis)) as client:
        firing = (await client.get("/alerts", params={"state": "firing", "symbol": "BTC-USDT"})).json()["rules"]
        assert sorted(r["fingerprint"] for r in firing) == ["fp1", "fp3"]
        assert [r["fingerprint"] for r in (await client.get("/alerts", params={"rule": "eth-below"})).json()["rules"]] \
            == ["fp2"]


async def test_health_names_what_is_down(redis, settings):
    app = create_app(settings, redis)
    now = int(time.time() * 1000)
    bus = Bus(redis)
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, SYM))
    ids = [await bus.publish(trades_stream(EX, SYM), b"x") for _ in range(5)]
    # candle_builder saved the offset of the second (its position: no consumer group, nothing pending)
    await redis.hset(builder_state(EX, SYM), streams.offset_field(trades_stream(EX, SYM)), ids[1])
    await redis.hset(streams.heartbeat("candle_builder"), mapping={"ts": now, "processed": 7})
    async with client_for(app) as client:
        r = await client.get("/health")
        assert r.status_code == 503
        body = r.json()
        assert body["problems"] == ["alert_engine: no heartbeat"]
        assert body["services"]["candle_builder"]["status"] == "ok"
        assert body["services"]["candle_builder"]["processed"] == "7"
        trades = next(s for s in body["streams"] if s["stream"] == trades_stream(EX, SYM))
        assert (trades["pending"], trades["lag"], trades["length"], trades["group"]) == (0, 3, 5, "candle_builder")

        await redis.hset(streams.heartbeat("alert_engine"), mapping={"ts": now - 60_000})
        body = (await client.get("/health")).json()
        assert len(body["problems"]) == 1 and "alert_engine: heartbeat is 6" in body["problems"][0]

        await redis.hset(streams.heartbeat("alert_engine"), mapping={"ts": now})
        r = await client.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"


async def test_health_503_when_redis_is_unreachable(settings):
    from shared.runtime import connect
    dead = connect("redis://127.0.0.1:1/0")  # nothing listens on port 1
    async with client_for(create_app(settings, dead)) as client:
        r = await client.get("/health")
    await dead.aclose()
    assert r.status_code == 503 and r.json()["problems"][0].startswith("redis unreachable")


async def test_bearer_tokens_read_only_and_health_open(redis):
    settings = Settings(api_token="s3cret", api_read_token="reader")
    async with client_for(create_app(settings, redis)) as client:
        assert (await client.get("/alerts")).status_code == 401
        assert (await client.get("/alerts", headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await client.get("/alerts", headers={"Authorization": "Bearer reader"})).status_code == 200
        assert (await client.get("/alerts", headers={"Authorization": "Bearer s3cret"})).status_code == 200
        assert (await client.get("/health")).status_code in (200, 503)
        r = await client.get("/alerts", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_api_app_serves_on_a_real_port_and_stops(redis_url):
    from shared.runtime import connect
    redis = connect(redis_url)
    settings = Settings(host="0.0.0.0", port=0, shutdown_grace_s=1)
    api = ApiApp(settings, redis)
    assert api.host == "127.0.0.1"  # no token: loopback only
    stop = asyncio.Event()
    task = asyncio.create_task(api.run(stop))
    await asyncio.wait_for(api.started.wait(), 10)
    async with httpx.AsyncClient(base_url=api.url) as client:
        r = await client.get("/alerts")
        assert r.status_code == 200 and r.json() == {"rules": []}
    stop.set()
    await asyncio.wait_for(task, 10)
    await redis.aclose()


def test_openapi_document_is_complete(settings):
    schema = create_app(settings, None).openapi()
    paths = schema["paths"]
    for path in ("/health", "/alerts", "/alerts/history", "/candles/{exchange}/{symbol}/{timeframe}"):
        assert path in paths, path
    assert "examples" in schema["components"]["schemas"]["CandleSeries"]


async def test_notifications_show_deliveries_and_dead_letters(redis, settings):
    # entries as the notifier writes them (services/notifier/delivery.py)
    a = alert(1)
    await redis.xadd(streams.NOTIFY_DELIVERIES, {b"target": "console", b"alert_ids": "a1,a2", b"count": 2,
                                                 b"status": "delivered", b"attempts": 1, b"reason": "", b"ts": 5})
    await redis.xadd(streams.NOTIFY_DELIVERIES, {b"target": "hook", b"alert_ids": "a1", b"count": 1,
                                                 b"status": "dead", b"attempts": 3, b"reason": "HTTP 400", b"ts": 6})
    await redis.xadd(streams.NOTIFY_DEAD_LETTER, {b"alert_id": "a1", b"target": "hook", b"reason": "HTTP 400",
                                                  b"attempts": 3, b"ts": 6, b"d": a.encode()})
    async with client_for(create_app(settings, redis)) as client:
        body = (await client.get("/notifications", params={"limit": 10})).json()
    assert [(d["target"], d["status"], d["alert_ids"]) for d in body["deliveries"]] == [
        ("hook", "dead", ["a1"]), ("console", "delivered", ["a1", "a2"])]
    dead = body["dead_letters"]
    assert len(dead) == 1 and dead[0]["reason"] == "HTTP 400" and dead[0]["alert"]["id"] == a.id
    assert dead[0]["alert"]["price"] == str(a.price)


async def test_api_app_reports_a_busy_port_and_beats(redis_url):
    from shared.runtime import connect
    redis = connect(redis_url)
    first = ApiApp(Settings(port=0, shutdown_grace_s=1), redis)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await asyncio.wait_for(first.started.wait(), 10)
    for _ in range(50):
        if await redis.hget(streams.heartbeat("api"), "url") == first.url.encode():
            break
        await asyncio.sleep(0.05)
    assert await redis.hget(streams.heartbeat("api"), "url") == first.url.encode()
    second = ApiApp(Settings(port=first.port, shutdown_grace_s=1), redis)
    with pytest.raises(ApiStartError, match="could not start on .*SENTINEL_API_PORT"):
        await asyncio.wait_for(second.run(asyncio.Event()), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    await redis.aclose()
