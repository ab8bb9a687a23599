"""The engine's reads paced by the bar clock with fast close (``AlertEngineApp._linger``): wait between bar closes,
read at once near one. ``close_wait`` is the arithmetic; ``FastClose.exchange_now`` the clock it is read against."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from services.alert_engine.app import CLOSE_LEAD_MS, CLOSE_TAIL_MS
from services.alert_engine.fastclose import TOP_UP_MS, FastClose, Replica
from services.candle_builder.core import SeriesBuilder
from shared.bus import Entry
from shared.schemas import TradeBatch
from shared.timeframes import close_wait, near_close

SEC, MIN = 1000, 60_000
WEEK = 7 * 86_400_000
MONDAY = 1_794_787_200_000  # 2026-11-16 00:00 UTC, a weekly close


def _close_wait(now: float, bases: list[int], linger: float) -> float:
    return close_wait(now, bases, linger, CLOSE_LEAD_MS, CLOSE_TAIL_MS)


@pytest.mark.parametrize(("phase", "expected"), [
    (500, 5.0),  # mid-bar: the whole linger
    (SEC - CLOSE_LEAD_MS - 2, 2.0),  # the wait is cut to end CLOSE_LEAD_MS before the close
    (SEC - CLOSE_LEAD_MS, 0.0),  # from then on: at once
    (SEC - 1, 0.0),
    (0, 0.0),  # the close itself
    (CLOSE_TAIL_MS - 1, 0.0),  # its tail: the closing trades of slower pairs
    (CLOSE_TAIL_MS, 5.0),
])
def test_close_wait_on_one_base(phase, expected):
    assert _close_wait(1_795_000_000_000 + phase, [SEC], 5) == expected


@pytest.mark.parametrize(("phase", "expected"), [
    (500, False), (SEC - CLOSE_LEAD_MS - 1, False), (SEC - CLOSE_LEAD_MS, True), (0, True), (TOP_UP_MS - 1, True),
    (TOP_UP_MS, False),
])
def test_a_single_entry_read_is_topped_up_early_from_the_lead_before_a_close_to_top_up_ms_after(phase, expected):
    """``AlertEngineApp._top_up_early``'s window (the closing trades written with the one read, and the last ones
    before the close)."""
    assert near_close(1_795_000_000_000 + phase, [SEC], CLOSE_LEAD_MS, TOP_UP_MS) is expected


def test_close_wait_takes_the_nearest_close_of_every_base():
    t = 1_795_000_040_000  # 20 s into a minute: a 1s close was 0 ms ago
    assert _close_wait(t, [MIN], 5) == 5.0
    assert _close_wait(t, [SEC, MIN], 5) == 0.0
    assert _close_wait(t + 500, [SEC, MIN], 5) == 5.0
    assert _close_wait(t + MIN - 20_000 - CLOSE_LEAD_MS - 1, [MIN], 5) == 1.0  # just before the minute's close
    assert _close_wait(t + 500, [], 5) == 5.0  # nothing closes: no limit but the linger
    # weeks close on Mondays (bucket_start), not on multiples of a week since the epoch (a Thursday)
    assert _close_wait(MONDAY + 1, [WEEK], 5) == 0.0
    assert _close_wait(MONDAY - CLOSE_LEAD_MS - 2, [WEEK], 5) == 2.0
    assert _close_wait(MONDAY + 3 * 86_400_000, [WEEK], 5) == 5.0


def _replica(tf: str) -> Replica:
    return Replica(SeriesBuilder([tf], base=tf, flat_candles=False), (0, 0))


def test_bases_follow_the_replicas():
    fast = FastClose(redis=None)
    fast.replicas[("x", "A/USDT")] = _replica("1s")
    fast.replicas[("x", "B/USDT")] = _replica("1m")
    fast.replicas[("x", "C/USDT")] = _replica("1s")
    assert fast.bases() == (SEC, MIN)
    fast.resync(("x", "B/USDT"))
    assert fast.bases() == (SEC,)


def test_exchange_now_is_the_clock_plus_the_freshest_trades_lead():
    """Trades stamped 300 ms behind this machine's clock (feed latency, or an exchange clock behind ours): a trade read
    now carries an exchange time 300 ms before it; a fresher one moves the estimate up, a staler one does not."""
    fast = FastClose(redis=None)
    pair = ("x", "A/USDT")
    fast.replicas[pair] = _replica("1s")

    def trade(tid: int, behind_ms: int) -> TradeBatch:
        return TradeBatch("x", "A/USDT", [(tid, int(time.time() * 1000) - behind_ms, Decimal(1), Decimal(1), 1)])

    fast.apply(pair, b"1-1", trade(1, 300), {"1s"})
    now = time.time() * 1000
    assert now - 320 < fast.exchange_now(now) < now - 280
    fast.apply(pair, b"1-2", trade(2, 900), {"1s"})  # a staler trade
    assert now - 320 < fast.exchange_now(now) < now - 280
    fast.apply(pair, b"1-3", trade(3, 100), {"1s"})
    assert now - 120 < fast.exchange_now(now) < now - 80


def test_a_bar_is_offered_for_speculation_only_near_its_close_and_as_the_closing_trade_will_close_it():
    """``FastClose.closing``: the candles a pair's next close gives, offered within ``window`` ms of that close and
    within SPECULATE_GAPS of the pair's gaps between trades (a pair trading every 2 ms: the last 6 ms), in every
    timeframe closing there; the closed candles the next trade then emits are equal to them."""
    fast = FastClose(redis=None)
    pair = ("x", "A/USDT")
    fast.replicas[pair] = Replica(SeriesBuilder(["1s", "1m"], base="1s", flat_candles=False), (0, 0))
    t0 = 1_794_787_200_000
    tid = 0
    for ms in range(0, 60_000 - 1, 2):  # a minute of trades every 2 ms, the last at t0 + 59998
        tid += 1
        fast.apply(pair, b"%d-0" % tid, TradeBatch("x", "A/USDT", [(tid, t0 + ms, Decimal(100 + ms % 7),
                                                                     Decimal("0.5"), tid % 2)]), {"1s", "1m"})
    close = t0 + 60_000
    assert fast.closing(pair, {"1s", "1m"}, close - 7, window_ms=50) == []  # 7 ms before: over 3 gaps of 2 ms
    assert fast.closing(pair, {"1s", "1m"}, close - 5, window_ms=4) == []  # over the window
    # FastClose.due: the same test without building the candles (asked of every pair read near a close)
    assert [fast.due(pair, close - ms, window_ms=50) for ms in (7, 5, 1)] == [False, True, True]
    assert not fast.due(pair, close - 5, window_ms=4) and not fast.due(("x", "B/USDT"), close - 1, window_ms=50)
    offered = fast.closing(pair, {"1s", "1m"}, close - 5, window_ms=50)
    assert [(c.timeframe, c.ts) for c in offered] == [("1s", close - 1000), ("1m", close - 60_000)]
    assert [c.timeframe for c in fast.closing(pair, {"1m"}, close - 1, window_ms=50)] == ["1m"]
    emitted = fast.apply(pair, b"%d-0" % (tid + 1), TradeBatch("x", "A/USDT", [(tid + 1, close + 3, Decimal(100),
                                                                                 Decimal(1), 1)]), {"1s", "1m"})
    assert emitted == offered and offered[1].trades == 30_000


def test_a_read_is_topped_up_when_it_closes_a_bar_that_other_pairs_still_have_open():
    """``FastClose.wants_top_up``: yes when a read holds the trade closing a pair's bar, within TOP_UP_MS of the
    bar's end, and another pair's bar of that close is still open; no for a trade inside the bar, once every pair has
    closed, for a late closing trade (a quiet pair's), or for a pair with another base (another close)."""
    fast = FastClose(redis=None)
    t0 = 1_794_787_200_000
    for sym, tf in (("A/USDT", "1s"), ("B/USDT", "1s"), ("C/USDT", "1m")):
        pair = ("x", sym)
        fast.replicas[pair] = _replica(tf)
        fast.apply(pair, b"1-0", TradeBatch("x", sym, [(1, t0 + 500, Decimal(1), Decimal(1), 1)]), {tf})

    def read(sym: str, ts: int) -> list[Entry]:
        return [Entry("s", b"2-0", TradeBatch("x", sym, [(2, ts, Decimal(1), Decimal(1), 1)]))]

    assert not fast.wants_top_up(read("A/USDT", t0 + 900))  # inside its bar
    assert fast.wants_top_up(read("A/USDT", t0 + 1000 + 3))  # closes A's bar; B's of the same close is open
    assert not fast.wants_top_up(read("A/USDT", t0 + 1000 + TOP_UP_MS))  # late: taken alone
    assert not fast.wants_top_up(read("A/USDT", t0 + 1000 + 3) + read("B/USDT", t0 + 1000 + 1))  # both closed here
    assert not fast.wants_top_up(read("C/USDT", t0 + 60_000))  # the only 1m pair: nobody else closes then


def test_a_close_is_settled_once_every_pair_closing_there_has_read_a_trade_past_it():
    """``FastClose.settled``: within the tail after a close, True once each replica whose bars close there has its
    bar in progress past it (the engine then lingers again instead of reading every entry at once for the whole
    tail); a pair with another base (no close then) does not count; outside a tail, False."""
    fast = FastClose(redis=None)
    t0 = 1_794_787_200_000  # a minute boundary
    for sym, tf in (("A/USDT", "1s"), ("B/USDT", "1s"), ("C/USDT", "1m")):
        pair = ("x", sym)
        fast.replicas[pair] = _replica(tf)
        fast.apply(pair, b"1-0", TradeBatch("x", sym, [(1, t0 + 500, Decimal(1), Decimal(1), 1)]), {tf})

    def trade(sym: str, n: int, ts: int) -> None:
        fast.apply(("x", sym), b"%d-0" % n, TradeBatch("x", sym, [(n, ts, Decimal(1), Decimal(1), 1)]), {"1s"})

    close = t0 + SEC
    assert not fast.settled(close - 5, CLOSE_TAIL_MS)  # before the close: not in a tail
    trade("A/USDT", 2, close + 1)
    assert not fast.settled(close + 2, CLOSE_TAIL_MS)  # B has not closed yet
    trade("B/USDT", 3, close + 2)
    assert fast.settled(close + 3, CLOSE_TAIL_MS)  # both 1s pairs past it; C's 1m bar does not close here
    assert not fast.settled(close + CLOSE_TAIL_MS, CLOSE_TAIL_MS)  # the tail is over
