"""``dump_state`` (``core.state``) reuses each timeframe's packed kept bars until one changes: after every kind of change
(closes, late trades revising kept bars, gaps, final watermarks, pruning, timeframe changes) the saved kept bars must
equal a fresh dump of them, and a restore from the saved state must continue exactly like the original."""

from __future__ import annotations

import random
from decimal import Decimal

from services.candle_builder.core import SeriesBuilder
from services.candle_builder.core.state import dump_state, restore_state
from shared.schemas import pack, unpack

T0 = 1_764_000_000_000


def _fresh_recent(b: SeriesBuilder) -> dict:
    """The kept bars dumped directly, without the cache (the independent computation)."""
    return {tf: [bar.dump() for bar in bars.values()] for tf, bars in b.recent.items()}


def _saved_recent(b: SeriesBuilder) -> dict:
    state = unpack(pack(dump_state(b)))
    return {tf: unpack(rows) if isinstance(rows, bytes) else rows for tf, rows in state["recent"].items()}


def _norm(recent: dict) -> dict:
    return unpack(pack(recent))  # tuples/lists alike


def test_saved_kept_bars_follow_every_change() -> None:
    rng = random.Random(5)
    b = SeriesBuilder({"1s", "1m", "3m"}, base="1s", flat_candles=True, lateness_ms=20_000, max_flat=1000)
    out: list = []
    now, tid = T0, 0
    for step in range(3000):
        kind = rng.random()
        if kind < 0.80:  # in order
            now += rng.randint(0, 400)
            tid += 1
            b.add_trades([(tid, now, Decimal(rng.randint(900, 1100)) / 10, Decimal("0.01"), rng.random() < 0.5)], out)
        elif kind < 0.93:  # late, often revising a kept (closed) bar, sometimes beyond the window
            tid += 1
            b.add_trades([(tid, now - rng.randint(0, 25_000), Decimal(rng.randint(900, 1100)) / 10, Decimal("0.02"),
                           True)], out)
        elif kind < 0.96:
            b.gap(now - rng.randint(0, 10_000), now - rng.randint(0, 3000), out)
        elif kind < 0.98:
            b.advance(now + rng.randint(0, 3000), out, final=rng.random() < 0.5)
        elif kind < 0.99:
            b.remove_timeframe("3m") if "3m" in b.timeframes else b.add_timeframe("3m")
        if step % 7 == 0 or kind >= 0.93:
            assert _saved_recent(b) == _norm(_fresh_recent(b)), step
        if step % 5 == 0:  # the very bytes a fresh pack of them gives (each kept bar packed once, then reused)
            assert dump_state(b)["recent"] == {tf: pack([bar.dump() for bar in bars.values()])
                                          for tf, bars in b.recent.items()}, step


def test_restore_from_saved_state_continues_identically() -> None:
    rng = random.Random(9)
    make = lambda: SeriesBuilder({"1s", "1m"}, base="1s", flat_candles=False, lateness_ms=30_000,  # noqa: E731
                                 max_flat=1000)
    a = make()
    trades = []
    now = T0
    for i in range(4000):
        now += rng.randint(0, 300)
        ts = now - (rng.randint(0, 40_000) if rng.random() < 0.1 else 0)
        trades.append((i, ts, Decimal(rng.randint(900, 1100)) / 10, Decimal("0.01"), i % 2 == 0))
    out_a: list = []
    out_b: list = []
    for t in trades[:2000]:
        a.add_trades([t], out_a)
        dump_state(a)  # the cache is used between batches, as the app saves state per batch
    b = make()
    restore_state(b, unpack(pack(dump_state(a))))
    for t in trades[2000:]:
        a.add_trades([t], out_a)
        b.add_trades([t], out_b)
    assert _norm(_fresh_recent(a)) == _norm(_fresh_recent(b))
    tail = len(out_a) - len(out_b)
    assert [(tf, bar.dump()) for tf, bar in out_a[tail:]] == [(tf, bar.dump()) for tf, bar in out_b]
