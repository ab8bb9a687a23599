"""A candle_builder with a large backlog keeps its own leases (issue 21: one process behind on 50-5,000 symbols kept
logging "FENCED lease ... lost" and retaking its partitions, its balance rounds starved by long CPU-bound reads).

Many symbols (the same real recording under other names) are published before the builder starts, with a lease TTL
short enough that one read's work outlasts it; every lease must hold (no lease lost, nothing fenced) and every
series' closed candles equal pandas' resample of the recording."""

from __future__ import annotations

import logging

from tests.conftest import shared_data
from tests.support.candles import (RECORDINGS, TIMEFRAMES, check_against_pandas, publish, read_candles, read_trades,
                                   run_until_caught_up, settings_for)

SYMBOLS = 24


async def test_a_builder_behind_on_many_symbols_keeps_every_lease(redis, redis_url, caplog) -> None:
    exchange, _, rel = RECORDINGS["btcusdt"]
    path = shared_data(rel)
    trades = read_trades(path)
    symbols = [f"S{k:02d}/USDT" for k in range(SYMBOLS)]
    for symbol in symbols:
        await publish(redis, exchange, symbol, trades, per_entry=20)
    caplog.set_level(logging.INFO)
    # the shortest TTL allowed (renewed every ~170 ms): a read of 2,000 entries (40,000 trades) takes longer here
    app = await run_until_caught_up(redis, settings_for(redis_url, lease_ttl_ms=500, read_count=2000), timeout=300)
    lost = [m for m in app.workers.moves if not m.gained]
    fenced = [r.getMessage() for r in caplog.records if "FENCED" in r.getMessage() or "was lost" in r.getMessage()]
    assert not lost and not fenced, (lost, fenced[:5])
    assert app.workers.restarts == 0
    assert app.trades_in == SYMBOLS * len(trades)
    for tf in TIMEFRAMES:
        for symbol in symbols:
            candles = await read_candles(redis, exchange, symbol, tf)
            check_against_pandas([c.model_copy(update={"symbol": "BTC/USDT"}) for c in candles], path, tf)
