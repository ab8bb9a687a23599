"""sentinel.client's trade_suite adapter driven the way trade_suite widgets use its TaskManager: two chart widgets
on one 3m series (a timeframe no rule and no candle_builder setting asks for), one also on the raw trades channel.
The real market_feed replays a real Kraken recording into the real candle_builder; the API serves history and relays
trades. The series is held while any widget watches and released when the last leaves; candles are compared with
pandas on the same trades, trades with the recording's rows."""

from __future__ import annotations

import asyncio

import pandas as pd

from sentinel.client import SentinelClient, SignalEmitter, Signals, TaskManager
from services.api.app import ApiApp
from services.api.settings import Settings as ApiSettings
from services.candle_builder.app import CandleBuilderApp
from services.candle_builder.settings import Settings as BuilderSettings
from services.market_feed.app import MarketFeedApp
from services.market_feed.settings import Settings as FeedSettings
from shared import streams
from shared.runtime import connect
from tests.support.subscriptions import subscribers
from tests.browser.test_dashboard import _until
from tests.conftest import shared_data

RECORDING = "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv"
EX, SYM, TF = "kraken", "BTC/USD", "3m"
MEMBER = streams.registry_member(EX, SYM, TF)


class ChartWidget:
    """What a trade_suite chart widget does: register its handlers, keep the frame of its own series."""

    def __init__(self, emitter: SignalEmitter) -> None:
        self.emitter = emitter
        self.frame = pd.DataFrame(columns=["dates", "opens", "highs", "lows", "closes", "volumes", "buy_volumes",
                                           "sell_volumes"], dtype=float)
        self.updates = 0
        self.trades: list[dict] = []
        emitter.register(Signals.NEW_CANDLES, self.on_new_candles)
        emitter.register(Signals.UPDATED_CANDLES, self.on_updated_candles)
        emitter.register(Signals.NEW_TRADE, self.on_new_trade)

    def mine(self, exchange: str, symbol: str, timeframe: str | None = None) -> bool:
        return (exchange, symbol) == (EX, SYM) and timeframe in (None, TF)

    def on_new_candles(self, exchange, symbol, timeframe, candles: pd.DataFrame) -> None:
        if self.mine(exchange, symbol, timeframe):
            self.frame = candles.copy()

    def on_updated_candles(self, exchange, symbol, timeframe, candles: pd.DataFrame) -> None:
        if self.mine(exchange, symbol, timeframe):
            self.updates += 1
            rest = self.frame[~self.frame["dates"].isin(candles["dates"])] if len(self.frame) else self.frame
            self.frame = pd.concat([rest, candles]).sort_values("dates").reset_index(drop=True)

    def on_new_trade(self, exchange, trade_data: dict) -> None:
        if self.mine(exchange, trade_data["symbol"]):
            self.trades.append(trade_data)

    def close(self) -> None:
        for signal, handler in ((Signals.NEW_CANDLES, self.on_new_candles),
                                (Signals.UPDATED_CANDLES, self.on_updated_candles),
                                (Signals.NEW_TRADE, self.on_new_trade)):
            self.emitter.unregister(signal, handler)


def pandas_3m() -> pd.DataFrame:
    df = pd.read_csv(shared_data(RECORDING))
    df["t"] = pd.to_datetime(df["timestamp"], unit="ms", utc=True)
    bars = df.set_index("t").resample("3min").agg({"price": ["first", "max", "min", "last"], "amount": "sum"})
    bars.columns = ["opens", "highs", "lows", "closes", "volumes"]
    bars["dates"] = [t.timestamp() for t in bars.index]
    return bars.dropna().reset_index(drop=True)[["dates", "opens", "highs", "lows", "closes", "volumes"]]


async def test_two_widgets_share_a_series_the_last_to_leave_releases_it(redis_url, redis, tmp_path):
    client_redis = connect(redis_url)
    common = {"redis_url": redis_url, "data_dir": tmp_path}
    builder = CandleBuilderApp(BuilderSettings(**common), client_redis)
    api = ApiApp(ApiSettings(port=0, shutdown_grace_s=1, services=[], trades_throttle_ms=50, **common), client_redis)
    feed = MarketFeedApp(FeedSettings(mode="replay", replay_file=shared_data(RECORDING), exchange=EX, symbol=SYM,
                                      speed=150, **common), client_redis)
    stop, feed_stop = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(builder.run(stop)), asyncio.create_task(api.run(stop))]
    await asyncio.wait_for(api.started.wait(), 15)
    emitter = SignalEmitter()
    client = SentinelClient(redis_url, api_url=api.url)
    manager = TaskManager(client, emitter)
    a, b = ChartWidget(emitter), ChartWidget(emitter)
    candles = {"type": "candles", "exchange": EX, "symbol": SYM, "timeframe": TF}
    try:
        manager.subscribe(a, candles)
        manager.subscribe(b, candles)
        manager.subscribe(b, {"type": "trades", "exchange": EX, "symbol": SYM})
        await manager.wait_ready(candles)

        async def held() -> bool:
            return (await subscribers(redis)).get(MEMBER) == 1  # one subscriber for the shared resource
        await _until(held, 10, "the series registered with candle_builder")
        await asyncio.sleep(1.5)  # candle_builder and the trades relay notice the new interest
        tasks.append(asyncio.create_task(feed.run(feed_stop)))

        async def a_has(n: int) -> bool:
            return len(a.frame) >= n
        await _until(lambda: a_has(4), 60, "3m candles at widget A")
        manager.unsubscribe(a)
        a.close()
        left_at = (len(a.frame), a.updates)
        assert (await subscribers(redis)).get(MEMBER) == 1  # B still watches

        async def b_has(n: int) -> bool:
            return len(b.frame) >= n
        await _until(lambda: b_has(12), 60, "widget B to keep receiving after A left")
        assert (len(a.frame), a.updates) == left_at  # A no longer receives anything

        # every bar B holds but the newest (maybe still open) is what pandas makes of the same trades
        expected = pandas_3m()
        got = b.frame.iloc[:-1].reset_index(drop=True)
        assert list(got.columns)[:6] == ["dates", "opens", "highs", "lows", "closes", "volumes"]  # trade_suite's
        got = got[["dates", "opens", "highs", "lows", "closes", "volumes"]]
        pd.testing.assert_frame_equal(got, expected.iloc[:len(got)], check_exact=False, rtol=1e-12)

        # the trades B received are the recording's rows, in order, from the first one
        rows = pd.read_csv(shared_data(RECORDING))
        assert len(b.trades) > 100
        seen = [(t["timestamp"], t["price"], t["amount"], t["side"]) for t in b.trades]
        assert seen == list(zip(rows["timestamp"][:len(seen)], rows["price"][:len(seen)],
                                rows["amount"][:len(seen)], rows["side"][:len(seen)]))

        manager.unsubscribe(b)
        b.close()

        async def released() -> bool:
            return MEMBER not in await subscribers(redis)
        await _until(released, 10, "the series released after the last widget left")
        assert not manager.tasks
    finally:
        await manager.aclose()
        feed_stop.set()
        stop.set()
        await asyncio.wait(tasks, timeout=15)
        await client.aclose()
        await client_redis.aclose()
