"""Late trades that fill buckets already published as flat candles, on a real (sparse) recording: the filled bucket,
every timeframe containing it and every flat candle after it are revised, and the last version of every candle equals
pandas' resample of all the trades, late ones included."""

from __future__ import annotations

from shared.schemas import Trade
from tests.support.candles import trades_stream
from tests.conftest import shared_data
from tests.support.candles import (
    RECORDINGS,
    check_against_pandas,
    publish,
    read_candles,
    read_trades,
    run_until_caught_up,
    settings_for,
)

MIN = 60_000


async def test_late_trades_into_flat_minutes_revise_them_and_the_flat_minutes_after(redis, redis_url):
    exchange, symbol, rel = RECORDINGS["xrpeth"]  # XRP/ETH, 2019: many minutes without a trade
    path = shared_data(rel)
    trades = read_trades(path)
    per_minute: dict[int, int] = {}
    for t in trades:
        per_minute[t.ts // MIN] = per_minute.get(t.ts // MIN, 0) + 1
    # trades alone in their minute and followed by a minute without trades: held back, their minute and the one
    # after it are published flat first
    lonely = [i for i, t in enumerate(trades[:-50]) if per_minute[t.ts // MIN] == 1
              and t.ts // MIN + 1 not in per_minute]
    late = set(lonely[::3][:25])
    assert len(late) >= 10
    order: list[Trade] = []
    held: dict[int, list[Trade]] = {}
    for i, t in enumerate(trades):
        if i in late:  # delivered once exchange time is at least 3 minutes past it
            j = next(k for k in range(i + 1, len(trades)) if trades[k].ts >= t.ts + 3 * MIN)
            held.setdefault(j, []).append(t)
        else:
            order.append(t)
        order.extend(held.pop(i, []))
    assert not held and len(order) == len(trades)
    await publish(redis, exchange, symbol, order, per_entry=7)
    tfs = ["1m", "3m", "5m", "15m", "1h"]
    app = await run_until_caught_up(redis, settings_for(redis_url, timeframes=tfs, lateness_ms=60 * MIN),
                                    [trades_stream(exchange, symbol)])
    assert app.status()["late_dropped"] == 0
    for tf in tfs:
        candles = await read_candles(redis, exchange, symbol, tf)
        check_against_pandas(candles, path, tf, revised=True)  # last versions: real OHLCV, flats at previous close
        for ts in {c.ts for c in candles}:  # versions of a bucket are numbered 0, 1, 2… in stream order
            assert [c.revision for c in candles if c.ts == ts] == list(range(sum(c.ts == ts for c in candles)))
    ones = await read_candles(redis, exchange, symbol, "1m")
    for i in late:
        minute = trades[i].ts // MIN * MIN
        versions = [c for c in ones if c.ts == minute]
        assert versions[0].trades == 0 and versions[-1].trades == 1, "published flat first, then filled"
        after = [c for c in ones if c.ts == minute + MIN]  # the flat minute after it: revised to the new close
        assert after[0].trades == 0 and after[-1].close == trades[i].price
        assert after[-1].revision >= 1 or after[0].close == trades[i].price
