"""FeedCore.push_block against its oracle, FeedCore.push of the same trades one by one: the same events, encoded
byte for byte as the publisher writes them, for any cut of the trades into blocks and any settings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.market_feed.core import Event, FeedCore, TickEvent
from shared.feed_codec import TextColumns, encode_trades, encode_watermark
from shared.schemas import TradeBatch, TradeText, Watermark


def _encoded(events: list[Event]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for e in events:
        if isinstance(e, TradeBatch):
            out.append(("trades", encode_trades(e.exchange, e.symbol, e.trades)))  # type: ignore[arg-type]
        elif isinstance(e, Watermark):
            out.append(("watermark", encode_watermark(e)))
        else:
            assert isinstance(e, TickEvent)
            out.append(("tick", (e.symbol, e.ts)))
    return out


def _columns(trades: list[TradeText]) -> TextColumns:
    return TextColumns([t.id for t in trades], [t.ts for t in trades], [t.price for t in trades],
                       [t.amount for t in trades], [1 if t.is_buy else 0 for t in trades])


@st.composite
def _runs(draw: st.DrawFn) -> tuple[dict, list[tuple[str, list[TradeText], bool]], dict]:
    knobs = {"batch_size": draw(st.integers(1, 12)), "window_ms": draw(st.integers(0, 40)),
             "watermark_every_ms": draw(st.integers(1, 60)),
             "ticker_every_ms": draw(st.none() | st.integers(1, 50))}
    last_ids = {"A": draw(st.none() | st.integers(0, 30)), "B": None}
    ts = draw(st.integers(0, 1000))
    next_id = {"A": draw(st.integers(0, 20)), "B": 0}
    runs = []
    for _ in range(draw(st.integers(1, 6))):
        symbol = draw(st.sampled_from(["A", "A", "B"]))
        trades = []
        for _ in range(draw(st.integers(0, 40))):
            ts += draw(st.sampled_from([0, 0, 1, 2, 5, 13, 70]))
            next_id[symbol] += draw(st.sampled_from([1, 1, 1, 2]))
            tid = next_id[symbol] if draw(st.integers(0, 30)) else next_id[symbol] - 3  # now and then out of order
            trades.append(TradeText(tid, ts, f"{draw(st.integers(1, 9))}.5", "0.01", draw(st.booleans())))
        runs.append((symbol, trades, draw(st.booleans())))  # as a block, or trade by trade
    return knobs, runs, last_ids


@settings(max_examples=400, deadline=None)
@given(_runs())
def test_push_block_gives_what_push_gives_trade_by_trade(case) -> None:
    knobs, runs, last_ids = case
    oracle = FeedCore("x", ["A", "B"], last_ids=dict(last_ids), **knobs)
    core = FeedCore("x", ["A", "B"], last_ids=dict(last_ids), **knobs)
    want: list[Event] = []
    got: list[Event] = []
    for symbol, trades, as_block in runs:
        for t in trades:
            want += oracle.push(symbol, t)
        if as_block:
            got += core.push_block(symbol, _columns(trades))
        else:
            for t in trades:
                got += core.push(symbol, t)
    want += oracle.finish()
    got += core.finish()
    assert _encoded(got) == _encoded(want)
    assert (core.accepted, core.dropped, core.clock) == (oracle.accepted, oracle.dropped, oracle.clock)


def test_a_block_is_cut_by_size_window_and_watermark() -> None:
    core = FeedCore("x", ["A"], batch_size=3, window_ms=10, watermark_every_ms=100)
    trades = [TradeText(i, ts, "1", "2", True) for i, ts in enumerate([0, 1, 2, 3, 20, 21, 150, 151], start=1)]
    events = core.push_block("A", _columns(trades)) + core.finish()
    shape = [[t.id for t in e.trades] if isinstance(e, TradeBatch) else ("wm", e.ts) for e in events]
    assert shape == [[1, 2, 3], [4], [5, 6], ("wm", 149), [7, 8], ("wm", 151)]
