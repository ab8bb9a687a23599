"""Reference helpers of the candle tests: trade readers of the recordings, candles computed by pandas (Decimal object
columns, no float) independently of services.candle_builder.core, and a builder run in-process until caught up."""

from __future__ import annotations

import asyncio
import csv
from decimal import Decimal
from pathlib import Path

import pandas as pd

from services.candle_builder.app import CandleBuilderApp
from services.candle_builder.settings import Settings
from shared import streams
from shared.bus import FIELD, Bus
from shared.candle_series import all_series, series_stream
from shared.feed_codec import encode_trades, encode_watermark
from shared.partitioned import caught_up
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from shared.schemas import Candle, Trade, Watermark

TIMEFRAMES = ["1m", "5m", "15m", "1h"]
FREQ = {"1m": "1min", "3m": "3min", "5m": "5min", "15m": "15min", "30m": "30min", "1h": "1h", "4h": "4h",
        "1d": "1D"}

RECORDINGS = {
    "btcusdt": ("binance", "BTC/USDT", "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"),
    "kraken": ("kraken", "BTC/USD", "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv"),
    "xrpeth": ("binance", "XRP/ETH", "binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv"),
}


def read_trades(path: Path) -> list[Trade]:
    """The generic layout ``timestamp,price,amount,side,id``; rows without an id are numbered."""
    out = []
    with path.open(newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh)):
            tid = int(row["id"]) if row["id"] else n
            out.append(Trade(tid, int(row["timestamp"]), Decimal(row["price"]), Decimal(row["amount"]),
                             row["side"] == "buy"))
    return out


def pandas_candles(path: Path, timeframe: str) -> pd.DataFrame:
    """OHLCV per bucket by pandas resample over Decimal columns (exact)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["ts"] = pd.to_datetime(df["timestamp"].astype("int64"), unit="ms")  # tz-naive: UTC by construction
    df["price"] = df["price"].map(Decimal).astype(object)
    df["amount"] = df["amount"].map(Decimal).astype(object)
    df["buy"] = [a if s == "buy" else Decimal(0) for a, s in zip(df["amount"], df["side"])]
    df["sell"] = [a if s != "buy" else Decimal(0) for a, s in zip(df["amount"], df["side"])]
    df["quote"] = [p * a for p, a in zip(df["price"], df["amount"])]
    rs = df.set_index("ts").resample(FREQ[timeframe], origin="epoch", closed="left", label="left")

    def total(col: str) -> pd.Series:
        return rs[col].apply(lambda s: sum(s, Decimal(0)))

    out = pd.DataFrame({
        "open": rs["price"].first(), "high": rs["price"].apply(lambda s: max(s) if len(s) else None),
        "low": rs["price"].apply(lambda s: min(s) if len(s) else None), "close": rs["price"].last(),
        "volume": total("amount"), "buy_volume": total("buy"), "sell_volume": total("sell"),
        "quote_volume": total("quote"), "trades": rs["price"].count(),
    })
    out.index = out.index.as_unit("ms").asi8 if hasattr(out.index, "as_unit") else out.index.asi8 // 10**6
    return out


def trades_stream(exchange: str, symbol: str, partitions: int = DEFAULT_PARTITIONS) -> str:
    """The partition trades stream a pair's TradeBatch / GapMarker / Watermark entries go to (market_feed's)."""
    return streams.part_trades(partition_of(exchange, symbol, partitions))


def tickers_stream(exchange: str, symbol: str, partitions: int = DEFAULT_PARTITIONS) -> str:
    """The partition tickers stream of a pair."""
    return streams.part_tickers(partition_of(exchange, symbol, partitions))


async def builder_caught_up(redis, partitions: int = DEFAULT_PARTITIONS) -> bool:
    """Whether candle_builder has processed every entry of every partition's trades stream."""
    return await caught_up(redis, partitions, streams.GROUP_CANDLE_BUILDER, streams.part_trades)


def builder_state(exchange: str, symbol: str, partitions: int = DEFAULT_PARTITIONS) -> str:
    """The hash holding candle_builder's offset and per-pair state of the pair's partition."""
    return streams.part_state(partition_of(exchange, symbol, partitions), streams.GROUP_CANDLE_BUILDER)


async def publish_feed(redis, exchange: str, symbol: str, entries: list[bytes]) -> None:
    """Write encoded feed entries (``encode_trades`` / ``encode_gap`` / ``encode_watermark``) of one pair where
    market_feed would: its partition's trades stream, the pair registered in FEED_REGISTRY."""
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(exchange, symbol))
    stream = trades_stream(exchange, symbol)
    for i in range(0, len(entries), 500):
        await Bus(redis).publish_many((stream, e) for e in entries[i:i + 500])


async def publish(redis, exchange: str, symbol: str, trades: list[Trade], per_entry: int,
                  final: bool = True) -> None:
    bus = Bus(redis)
    stream = trades_stream(exchange, symbol)
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(exchange, symbol))
    items = [(stream, encode_trades(exchange, symbol, trades[i:i + per_entry]))
             for i in range(0, len(trades), per_entry)]
    for i in range(0, len(items), 500):
        await bus.publish_many(items[i:i + 500])
    if final:
        await bus.publish(stream, encode_watermark(Watermark(exchange, symbol, trades[-1].ts, final=True)))


async def run_until_caught_up(redis, settings: Settings, streams_: list[str] | None = None, timeout: float = 60.0,
                              stop_early: int | None = None) -> CandleBuilderApp:
    """Run a builder until it has processed every partition's trades stream (``streams_``: not used any more)."""
    app = CandleBuilderApp(settings, redis)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            if task.done():
                task.result()
                raise AssertionError("candle_builder stopped by itself")
            if stop_early is not None and app.trades_in >= stop_early:
                break
            if app.workers.owned and await caught_up(redis, settings.partitions, streams.GROUP_CANDLE_BUILDER,
                                                      streams.part_trades):
                break
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not caught up within {timeout}s: {app.status()}")
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    return app


def candles_stream(exchange: str, symbol: str, tf: str, partitions: int = DEFAULT_PARTITIONS) -> str:
    """The stream of one series' closed candles (``streams.series_candles`` of its partition)."""
    return series_stream(exchange, symbol, tf, partitions)


def live_stream(exchange: str, symbol: str, partitions: int = DEFAULT_PARTITIONS) -> str:
    """The in-progress candles stream of a pair's partition (shared with its other series)."""
    return streams.part_live(partition_of(exchange, symbol, partitions))


async def read_candles(redis, exchange: str, symbol: str, tf: str,
                       partitions: int = DEFAULT_PARTITIONS) -> list[Candle]:
    return [Candle.decode(f[FIELD]) for _, f in await redis.xrange(candles_stream(exchange, symbol, tf, partitions))]


async def read_live(redis, exchange: str, symbol: str, tf: str, partitions: int = DEFAULT_PARTITIONS) -> list[Candle]:
    """The series' in-progress candles in its partition's ``part_live`` stream, oldest first."""
    out = [Candle.decode(f[FIELD]) for _, f in await redis.xrange(live_stream(exchange, symbol, partitions))]
    return [c for c in out if (c.exchange, c.symbol, c.timeframe) == (exchange, symbol, tf)]


async def registered(redis, partitions: int = DEFAULT_PARTITIONS) -> list[tuple[str, str, str]]:
    """Every series candle_builder registered (every partition's ``part_candle_registry``)."""
    return await all_series(redis, partitions)


def history_from_key(exchange: str, symbol: str, partitions: int = DEFAULT_PARTITIONS) -> str:
    """The hash of a pair's partition holding its series' oldest history candle (``part_candle_history_from``)."""
    return streams.part_candle_history_from(partition_of(exchange, symbol, partitions))


def settings_for(redis_url: str, **kw) -> Settings:
    kw.setdefault("timeframes", TIMEFRAMES)
    kw.setdefault("block_ms", 50)
    kw.setdefault("discover_every_s", 0.05)
    return Settings(redis_url=redis_url, **kw)


def check_against_pandas(candles: list[Candle], path: Path, tf: str, revised: bool = False) -> None:
    expected = pandas_candles(path, tf)
    got = {c.ts: c for c in candles}  # the last version of each bucket
    # Exactly once: one closed candle per (bucket, revision), none duplicated.
    versions = [(c.ts, c.revision) for c in candles]
    assert len(set(versions)) == len(versions), f"{tf}: a candle was published twice"
    if not revised:
        assert len(got) == len(candles)
    assert sorted(got) == list(expected.index), f"{tf}: buckets differ"
    prev_close = None
    for ts, row in expected.iterrows():
        c = got[ts]
        if row["trades"]:
            actual = (c.open, c.high, c.low, c.close, c.volume, c.buy_volume, c.sell_volume, c.quote_volume,
                      c.trades)
            wanted = (row["open"], row["high"], row["low"], row["close"], row["volume"], row["buy_volume"],
                      row["sell_volume"], row["quote_volume"], row["trades"])
            assert actual == wanted, f"{tf} {ts}: {actual} != {wanted}"
            assert c.buy_volume + c.sell_volume == c.volume
            assert c.vwap == row["quote_volume"] / row["volume"]
            prev_close = row["close"]
        else:  # an empty interval: a flat candle at the previous close
            assert (c.open, c.high, c.low, c.close, c.volume, c.trades) == (prev_close,) * 4 + (0, 0), f"{tf} {ts}"
        assert c.closed and (revised or c.revision == 0)


async def register_series(redis, *keys: tuple[str, str, str], partitions: int = DEFAULT_PARTITIONS) -> None:
    """Add series to their partition's ``part_candle_registry``, as candle_builder does with their first candle."""
    for ex, sym, tf in keys:
        await redis.sadd(streams.part_candle_registry(partition_of(ex, sym, partitions)),
                         streams.registry_member(ex, sym, tf))


async def publish_live(redis, candle: Candle, partitions: int = DEFAULT_PARTITIONS) -> None:
    """Write an in-progress candle where candle_builder does: its partition's ``part_live`` stream and its series'
    field of ``part_live_latest``."""
    p = partition_of(candle.exchange, candle.symbol, partitions)
    await Bus(redis).publish(streams.part_live(p), candle.encode())
    await redis.hset(streams.part_live_latest(p), streams.registry_member(candle.exchange, candle.symbol,
                                                                          candle.timeframe), candle.encode())
