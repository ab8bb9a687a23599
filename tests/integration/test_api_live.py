"""The /ws endpoint on a real uvicorn server: what services PUBLISH on Redis channels reaches the socket as JSON."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest
import websockets

from services.api.app import ApiApp
from services.api.settings import Settings
from shared import streams
from shared.bus import Bus
from shared.runtime import connect
from shared.schemas import Alert, Candle, Ticker
from tests.support.candles import tickers_stream
from tests.support.subscriptions import subscribers
from tests.support.candles import candles_stream, live_stream

EX, SYM, TF = "binance", "BTC/USDT", "1m"


@pytest.fixture
async def api(redis_url, redis):
    client = connect(redis_url)
    app = ApiApp(Settings(port=0, shutdown_grace_s=1, api_token="tok"), client)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await asyncio.wait_for(app.started.wait(), 10)
    yield app
    stop.set()
    await asyncio.wait_for(task, 10)
    await client.aclose()


def candle(ts: int, closed: bool) -> Candle:
    p = Decimal("61000.25") + ts % 7
    return Candle(exchange=EX, symbol=SYM, timeframe=TF, ts=ts, open=p, high=p + 1, low=p - 1, close=p,
                  volume=Decimal("3.5"), buy_volume=Decimal("2"), sell_volume=Decimal("1.5"), closed=closed)


async def test_websocket_streams_alerts_candles_and_tickers(api, redis):
    url = f"ws://127.0.0.1:{api.port}/ws?series=binance|BTC-USDT|1m&tickers=binance|BTC/USDT&token=tok"
    bus = Bus(redis)
    async with websockets.connect(url) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["type"] == "subscribed" and streams.CHANNEL_ALERTS in hello["data"]["channels"]
        assert (await subscribers(redis)).get("binance|BTC/USDT|1m") == 1
        sent = [
            ("candle_live", candle(60_000, False), live_stream(EX, SYM),
             streams.channel_candles_live(EX, SYM, TF)),
            ("candle", candle(60_000, True), candles_stream(EX, SYM, TF), streams.channel_candles(EX, SYM, TF)),
            ("ticker", Ticker(exchange=EX, symbol=SYM, ts=5, bid=Decimal("1.1"), ask=Decimal("1.3")),
             tickers_stream(EX, SYM), streams.channel_tickers(EX, SYM)),
            ("alert", Alert(id="x1", rule="r", exchange=EX, symbol=SYM, ts=60_000, fired_at=120_000,
                            price=Decimal("61000.25")), streams.part_alerts(0), streams.CHANNEL_ALERTS),
        ]
        # another series' channel must not leak into this socket
        await redis.publish(streams.channel_candles(EX, "ETH/USDT", TF), candle(1, True).encode())
        for _, message, stream, channel in sent:
            await bus.publish(stream, message.encode(), channel=channel)
        got = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in sent]
    assert [g["type"] for g in got] == [s[0] for s in sent]
    for g, (_, message, _, _) in zip(got, sent, strict=True):
        assert type(message).model_validate(g["data"]) == message
    assert got[3]["data"]["price"] == "61000.25"
    for _ in range(50):  # the series is withdrawn when the socket closes
        if "binance|BTC/USDT|1m" not in await subscribers(redis):
            break
        await asyncio.sleep(0.05)
    assert "binance|BTC/USDT|1m" not in await subscribers(redis)


async def test_websocket_refuses_a_missing_token(api):
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        async with websockets.connect(f"ws://127.0.0.1:{api.port}/ws?alerts=true") as ws:
            await ws.recv()
    assert info.value.response.status_code == 403
