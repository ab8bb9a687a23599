"""FeedCore batching, dedup and watermarks, checked against direct recomputation on real trades."""

from __future__ import annotations

import itertools
from decimal import Decimal

from services.market_feed.core import FeedCore, IdDedup, TickEvent, pace_delay
from shared.recordings import read_trades
from shared.schemas import Trade, TradeBatch, Watermark
from tests.conftest import shared_data


def _real_trades() -> list[Trade]:
    return list(read_trades(shared_data("binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv")))


def _run(core: FeedCore, symbol: str, trades: list[Trade]) -> list:
    events = []
    for t in trades:
        events.extend(core.push(symbol, t))
    events.extend(core.finish())
    return events


def test_batches_cover_every_trade_in_order_within_window_and_size():
    trades = _real_trades()
    core = FeedCore("binance", ["BTC/USDT"], batch_size=50, window_ms=20, watermark_every_ms=1000)
    events = _run(core, "BTC/USDT", trades)
    batches = [e for e in events if isinstance(e, TradeBatch)]
    assert [t for b in batches for t in b.trades] == trades
    for b in batches:
        assert 1 <= len(b.trades) <= 50
        assert b.trades[-1].ts - b.trades[0].ts <= 20
    # several trades per entry on this busy capture
    assert len(batches) < len(trades) / 2


def test_watermarks_never_precede_trades_they_cover_and_final_is_last():
    trades = _real_trades()
    core = FeedCore("binance", ["BTC/USDT"], batch_size=100, window_ms=50, watermark_every_ms=1000)
    events = _run(core, "BTC/USDT", trades)
    marks = [e for e in events if isinstance(e, Watermark)]
    assert marks[-1] == Watermark("binance", "", trades[-1].ts, final=True) and events[-1] is marks[-1]
    assert not any(m.final for m in marks[:-1])
    # after a watermark at W, no trade at or before W follows
    seen_mark = -1
    for e in events:
        if isinstance(e, Watermark):
            assert e.ts >= seen_mark
            seen_mark = e.ts
        else:
            assert min(t.ts for t in e.trades) > seen_mark
    # one watermark per second boundary crossed by the recording (independent count of distinct seconds)
    seconds = {t.ts // 1000 for t in trades}
    assert len(marks) - 1 <= len(seconds) and len(marks) - 1 >= 0.5 * (max(seconds) - min(seconds))


def test_dedup_drops_ids_at_or_below_last_and_across_restart():
    trades = _real_trades()[:500]
    core = FeedCore("binance", ["BTC/USDT"], last_ids={"BTC/USDT": trades[199].id})
    events = _run(core, "BTC/USDT", trades + trades[100:300])  # resent frames are dropped too
    got = [t for e in events if isinstance(e, TradeBatch) for t in e.trades]
    assert got == trades[200:]
    assert core.dropped == 200 + 200


def test_string_ids_use_a_bounded_window_and_none_ids_pass():
    d = IdDedup(window=1000)
    assert d.accept("a") and not d.accept("a")
    for i in range(2000):
        d.accept(f"x{i}")
    assert d.accept("a")  # evicted: memory stays bounded
    assert d.accept(None) and d.accept(None)


def test_tick_events_per_symbol_and_interleaved_symbols():
    a = [Trade(i, 1000 + i * 300, Decimal("1"), Decimal("1"), True) for i in range(1, 20)]
    b = [Trade(i, 1100 + i * 300, Decimal("2"), Decimal("1"), False) for i in range(1, 20)]
    merged = sorted(itertools.chain((("A", t) for t in a), (("B", t) for t in b)), key=lambda x: x[1].ts)
    core = FeedCore("x", ["A", "B"], batch_size=3, window_ms=1000, ticker_every_ms=1000)
    events = []
    for sym, t in merged:
        events.extend(core.push(sym, t))
    events.extend(core.finish())
    got = {s: [t for e in events if isinstance(e, TradeBatch) and e.symbol == s for t in e.trades] for s in "AB"}
    assert got == {"A": a, "B": b}
    ticks = [e for e in events if isinstance(e, TickEvent)]
    assert {e.symbol for e in ticks} == {"A", "B"}
    assert sorted({e.ts for e in ticks}) == list(range(2000, 7000, 1000))


def test_pace_delay():
    assert pace_delay(11_000, 1_000, 100.0, 100.0, 2.0) == 5.0
    assert pace_delay(11_000, 1_000, 100.0, 110.0, 2.0) == 0.0
    assert pace_delay(11_000, 1_000, 100.0, 100.0, 0) == 0.0


def test_is_new_tells_what_push_would_publish_without_changing_anything():
    """A resumed replay paces from the first trade ``is_new`` accepts: it must agree with ``push`` trade by trade
    (integer ids against the resumed last id, string ids against those seen) and leave the state untouched."""
    trades = _real_trades()[:3000]
    resume = trades[1200].id
    core = FeedCore("binance", ["BTC/USDT"], last_ids={"BTC/USDT": resume})
    told = [core.is_new("BTC/USDT", t) for t in trades]
    assert told == [core.is_new("BTC/USDT", t) for t in trades]  # asking twice changed nothing
    published = []
    for t in trades:
        published.extend(t2 for e in core.push("BTC/USDT", t) if isinstance(e, TradeBatch) for t2 in e.trades)
    published.extend(t2 for e in core.finish() if isinstance(e, TradeBatch) for t2 in e.trades)
    assert [t for t, new in zip(trades, told) if new] == published == [t for t in trades if t.id > resume]
    by_str = FeedCore("x", ["A"])
    first = Trade("a-1", 1, Decimal(1), Decimal(1), True)
    assert by_str.is_new("A", first) and by_str.push("A", first) == [] and not by_str.is_new("A", first)
