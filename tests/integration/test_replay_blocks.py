"""A replay in blocks of columns (``shared.trade_blocks`` → ``FeedCore.push_block``) writes to Redis exactly what the
trade-by-trade replay (``read_trade_texts`` → ``FeedCore.push``) writes: every entry of every partition byte for
byte, and the feed's resume state, on a real redis-server. And a bad row deep in a file stops ``sentinel backtest``
with the row reader's message."""

from __future__ import annotations

import asyncio
import re
from itertools import repeat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.market_feed.app import MarketFeedApp
from services.market_feed.settings import Settings
from sentinel.cli import app
from shared import streams
from shared.bus import FIELD
from shared.errors import SentinelError
from shared.recordings import read_trade_texts
from shared.trade_blocks import read_trade_blocks
from tests.conftest import REPO, shared_data

BINANCE = "binance_spot_btcusdt/BTCUSDT-trades-2024-08-08-binance-layout.csv"
GENERIC = ["binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv",
           "binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv"]
#: the backtest's market_feed settings, and the service's defaults
KNOBS = [{"batch_size": 1000, "batch_window_ms": 3_600_000, "watermark_every_ms": 60_000}, {}]


async def _published(redis, settings: Settings, source) -> tuple[list[bytes], dict]:
    await redis.flushall()
    feed = MarketFeedApp(settings, redis, source=source)
    await asyncio.wait_for(feed.run(asyncio.Event()), timeout=100)
    assert feed.done
    entries = [fields[FIELD] for p in range(settings.partitions)
               for _, fields in await redis.xrange(streams.part_trades(p))]
    state = {}
    for p in range(settings.partitions):
        raw = await redis.hgetall(streams.part_state(p, streams.feed_group(settings.resolved_exchange())))
        state.update({k: v for k, v in raw.items() if k.startswith((b"last_id:", b"last_ts:"))})
    return entries, state


def _binance_layout(relative: str, path: Path) -> Path:
    """A generic-layout recording written in Binance's layout (µs times, a header): the columnar path on it."""
    rows = shared_data(relative).read_text().splitlines()[1:]
    lines = ["id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"]
    for row in rows:
        ts, price, amount, side, tid = row.split(",")
        lines.append(f"{tid},{price},{amount},1,{int(ts) * 1000},{'false' if side == 'buy' else 'true'},true")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("which", ["bench-1M", BINANCE, *GENERIC, "xrpeth-binance-layout"])
async def test_blocks_publish_byte_for_byte_what_trade_by_trade_publishes(redis, tmp_path, which) -> None:
    if which == "bench-1M":
        from bench.bench_backtest import generate_one

        path = generate_one(tmp_path, 1_000_000)
    elif which == "xrpeth-binance-layout":
        path = _binance_layout(GENERIC[1], tmp_path / "XRPETH-trades.csv")
    else:
        path = shared_data(which)
    symbol = "BTC/USDT" if "BTC" in path.name else "XRP/ETH"
    for knobs in KNOBS if which != "bench-1M" else KNOBS[:1]:
        settings = Settings(mode="replay", replay_file=path, symbol=symbol, exchange="binance", speed=0, **knobs)
        blocks = [item for item in read_trade_blocks(path) if hasattr(item, "tss")]
        if which in (BINANCE, "bench-1M", "xrpeth-binance-layout"):
            assert blocks  # the columnar path is what runs
        new = await _published(redis, settings, None)  # replay_file: read in blocks
        old = await _published(redis, settings, ([symbol], zip(repeat(symbol), read_trade_texts(path))))
        assert len(new[0]) == len(old[0]) and new[0] == old[0]
        assert new[1] == old[1] and new[1]


def test_a_bad_row_deep_in_a_file_stops_the_backtest_with_the_row_readers_message(tmp_path) -> None:
    lines = shared_data(BINANCE).read_text().splitlines()
    bad = tmp_path / "BTCUSDT-trades-2024-08-08.csv"
    bad.write_text("\n".join(lines[:17_000] + ["3735700001,61837.63,0.1,1,1723161900000,maybe,true"]
                             + lines[17_000:]) + "\n")
    message = f"{bad}:17001: field 'is_buyer_maker' — expected true or false, got 'maybe'"
    with pytest.raises(SentinelError, match=re.escape(message) + "$"):
        CliRunner().invoke(app, ["backtest", str(bad), "--rules", str(REPO / "services" / "alert_engine" /
                                                                       "sample_rules.yaml"), "--out",
                                 str(tmp_path / "out")], catch_exceptions=False)
