"""The pure aggregation core: derived timeframes equal direct aggregation of the trades (hypothesis), flat candles,
weekly alignment, late trades, gaps, and a dump/restore round trip."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.candle_builder.core import Bar, SeriesBuilder
from services.candle_builder.core.in_progress import in_progress, last_closed
from services.candle_builder.core.state import dump_state, restore_state

MIN = 60_000
TFS = ["1m", "3m", "5m", "15m", "1h"]
LEN = {"1s": 1000, "1m": MIN, "3m": 3 * MIN, "5m": 5 * MIN, "15m": 15 * MIN, "1h": 60 * MIN, "4h": 240 * MIN,
       "1d": 1440 * MIN}


def direct(trades: list[tuple], length: int, start_of=None) -> dict[int, tuple]:
    """Independent aggregation: group trades by bucket, no rolling up."""
    groups: dict[int, list[tuple]] = {}
    for t in trades:
        b = start_of(t[1]) if start_of else t[1] // length * length
        groups.setdefault(b, []).append(t)
    out = {}
    for b, ts in groups.items():
        prices = [t[2] for t in ts]
        out[b] = (prices[0], max(prices), min(prices), prices[-1], sum((t[3] for t in ts), Decimal(0)),
                  sum((t[3] for t in ts if t[4]), Decimal(0)), sum((t[3] for t in ts if not t[4]), Decimal(0)),
                  sum((t[2] * t[3] for t in ts), Decimal(0)), len(ts), ts[0][0], ts[-1][0])
    return out


def as_tuple(bar: Bar) -> tuple:
    return (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.buy_volume, bar.sell_volume, bar.quote_volume,
            bar.trades, bar.first_id, bar.last_id)


def latest(out: list) -> dict[str, dict[int, Bar]]:
    """The last version of each (timeframe, bucket): what a consumer keeps."""
    by: dict[str, dict[int, Bar]] = {}
    for tf, bar in out:
        by.setdefault(tf, {})[bar.ts] = bar
    return by


prices = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("100000"), places=8)
amounts = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1000"), places=8)


@st.composite
def trade_runs(draw):
    n = draw(st.integers(1, 200))
    t0 = draw(st.integers(1_600_000_000_000, 1_700_000_000_000))
    steps = draw(st.lists(st.one_of(st.integers(0, 2_000), st.integers(0, 20 * MIN)), min_size=n, max_size=n))
    trades, ts = [], t0
    for i, step in enumerate(steps):
        ts += step
        trades.append((1000 + i, ts, draw(prices), draw(amounts), draw(st.booleans())))
    cuts = sorted(set(draw(st.lists(st.integers(1, n), max_size=10))))
    return trades, cuts


@settings(max_examples=100, deadline=None)
@given(trade_runs(), st.booleans(), st.booleans())
def test_derived_timeframes_equal_direct_aggregation(run, flat, with_watermarks):
    trades, cuts = run
    builder = SeriesBuilder(TFS, flat_candles=flat)
    out: list = []
    prev = 0
    for cut in [*cuts, len(trades)]:
        builder.add_trades(trades[prev:cut], out)
        if with_watermarks and cut < len(trades) and trades[cut][1] > trades[cut - 1][1]:
            builder.advance(trades[cut][1] - 1, out)  # exchange time moved on, just before the next trade
        prev = cut
    builder.advance(trades[-1][1], out, final=True)
    keys = [(tf, bar.ts) for tf, bar in out]
    assert len(keys) == len(set(keys)), "a candle was emitted twice"
    by = latest(out)
    for tf in TFS:
        expected = direct(trades, LEN[tf])
        got = by.get(tf, {})
        assert {ts: as_tuple(b) for ts, b in got.items() if b.trades} == expected
        empty = sorted(ts for ts, b in got.items() if not b.trades)
        if flat:  # every empty interval between the first and last trade is a flat candle at the previous close
            first, last = min(expected), max(expected)
            assert sorted(got) == list(range(first, last + 1, LEN[tf]))
            for ts in empty:
                before = max(b for b in expected if b < ts)
                bar = got[ts]
                assert bar.open == bar.high == bar.low == bar.close == expected[before][3]
                assert bar.volume == 0
        else:
            assert empty == []


@settings(max_examples=40, deadline=None)
@given(trade_runs(), st.data())
def test_dump_and_restore_anywhere_gives_the_same_candles(run, data):
    trades, _ = run
    cut = data.draw(st.integers(0, len(trades)))
    whole: list = []
    one = SeriesBuilder(TFS)
    one.add_trades(trades, whole)
    one.advance(trades[-1][1], whole, final=True)
    parts: list = []
    first = SeriesBuilder(TFS)
    first.add_trades(trades[:cut], parts)
    second = SeriesBuilder(TFS)
    import msgpack
    restore_state(second, msgpack.unpackb(msgpack.packb(dump_state(first))))
    second.add_trades(trades[cut:], parts)
    second.advance(trades[-1][1], parts, final=True)
    assert [(tf, as_tuple(b), b.ts) for tf, b in whole] == [(tf, as_tuple(b), b.ts) for tf, b in parts]


def test_weeks_start_on_monday_and_days_at_midnight_utc():
    monday = int(dt.datetime(2024, 8, 5, tzinfo=dt.UTC).timestamp() * 1000)
    trades = [(i, monday - 3 * 86_400_000 + i * 7_200_000, Decimal(100 + i), Decimal(1), i % 2 == 0)
              for i in range(120)]  # Friday before to the next Friday, every 2 hours
    builder = SeriesBuilder(["1m", "4h", "1d", "1w"])
    out: list = []
    builder.add_trades(trades, out)
    builder.advance(trades[-1][1], out, final=True)
    by = latest(out)

    def week_start(ts: int) -> int:
        day = dt.datetime.fromtimestamp(ts / 1000, dt.UTC)
        monday0 = (day - dt.timedelta(days=day.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        return int(monday0.timestamp() * 1000)

    assert {ts: as_tuple(b) for ts, b in by["1w"].items()} == direct(trades, 0, week_start)
    assert monday in by["1w"]
    assert {ts: as_tuple(b) for ts, b in by["1d"].items()} == direct(trades, LEN["1d"])
    assert {ts: as_tuple(b) for ts, b in by["4h"].items()} == direct(trades, LEN["4h"])


def test_a_derived_candle_opens_at_its_first_trade_not_at_a_flat_minute():
    t0 = 1_700_000_100_000 // (5 * MIN) * (5 * MIN)
    trades = [(1, t0 - 1000, Decimal("10"), Decimal("1"), True),  # previous 5m bucket, close 10
              (2, t0 + 2 * MIN, Decimal("20"), Decimal("1"), False)]  # minutes 0 and 1 of the bucket are empty
    builder = SeriesBuilder(["1m", "5m"])
    out: list = []
    builder.add_trades(trades, out)
    builder.advance(t0 + 5 * MIN, out)
    five = latest(out)["5m"][t0]
    assert (five.open, five.high, five.low, five.close) == (Decimal(20),) * 4
    ones = latest(out)["1m"]
    assert ones[t0].close == ones[t0 + MIN].close == Decimal(10) and ones[t0].trades == 0


def test_a_bucket_closes_on_a_watermark_without_a_later_trade():
    builder = SeriesBuilder(["1m", "5m"])
    out: list = []
    builder.add_trades([(1, 5 * MIN + 10, Decimal(1), Decimal(1), True)], out)
    builder.advance(6 * MIN - 1, out)
    assert out == []
    builder.advance(6 * MIN, out)
    assert [(tf, b.ts) for tf, b in out] == [("1m", 5 * MIN)]
    builder.advance(10 * MIN, out)
    assert [(tf, b.ts) for tf, b in out][-1] == ("5m", 5 * MIN)


def test_late_trades_revise_closed_candles_within_the_window_and_are_counted_beyond():
    trades = [(i, i * 20_000, Decimal(100 + i % 7), Decimal("0.5"), i % 3 == 0) for i in range(60)]  # 20 minutes
    late_ok, late_old = trades[40], trades[5]  # minute 13 (within 5 min of minute 19); minute 1 (too old)
    order = [t for t in trades if t not in (late_ok, late_old)] + [late_ok, late_old]
    builder = SeriesBuilder(["1m", "5m", "15m"], lateness_ms=7 * MIN)
    out: list = []
    builder.add_trades(order[:-2], out)
    builder.add_trades(order[-2:], out)
    builder.advance(trades[-1][1], out, final=True)
    assert builder.late_dropped == 1 and builder.late_revised == 1
    kept = [t for t in trades if t is not late_old]
    by = latest(out)
    for tf in ("1m", "5m", "15m"):
        assert {ts: as_tuple(b) for ts, b in by[tf].items()} == direct(kept, LEN[tf])
    revised = [(tf, b.ts, b.revision) for tf, b in out if b.revision]
    assert ("1m", 13 * MIN, 1) in revised and ("5m", 10 * MIN, 1) in revised
    assert ("15m", 0, 1) in revised
    assert len(revised) == 3  # one revision per timeframe, not one per late trade


def test_a_gap_marks_candles_incomplete():
    builder = SeriesBuilder(["1m", "5m"])
    out: list = []
    builder.add_trades([(1, 10, Decimal(1), Decimal(1), True)], out)
    builder.gap(2 * MIN + 5, 3 * MIN + 5, out)
    builder.add_trades([(2, 7 * MIN, Decimal(2), Decimal(1), True)], out)
    builder.advance(10 * MIN, out, final=True)
    flags = {(tf, b.ts): b.incomplete for tf, b in out}
    assert flags[("1m", 0)] is False and flags[("1m", MIN)] is False
    assert flags[("1m", 2 * MIN)] and flags[("1m", 3 * MIN)] and not flags[("1m", 4 * MIN)]
    assert flags[("5m", 0)] and not flags[("5m", 5 * MIN)]


def test_a_timeframe_added_mid_bucket_starts_at_its_next_full_bucket():
    trades = [(i, i * 30_000, Decimal(100 + i % 5), Decimal(1), i % 2 == 0) for i in range(40)]  # 20 minutes
    builder = SeriesBuilder(["1m"])
    out: list = []
    builder.add_trades(trades[:15], out)  # up to minute 7:00 (a 5m bucket is under way)
    builder.add_timeframe("5m")
    builder.add_trades(trades[15:], out)
    builder.advance(trades[-1][1], out, final=True)
    five = latest(out)["5m"]
    assert sorted(five) == [10 * MIN, 15 * MIN]  # the 5..10 bucket was under way: never published half-built
    expected = direct(trades, 5 * MIN)
    assert {ts: as_tuple(b) for ts, b in five.items()} == {ts: expected[ts] for ts in five}
    builder.remove_timeframe("5m")
    assert builder.timeframes == ["1m"]


@st.composite
def late_runs(draw):
    """Trades in exchange order (strictly increasing times, minutes apart at times so flat candles appear) and a
    delivery order in which some trades come late: each held back and delivered after up to 30 later trades."""
    n = draw(st.integers(2, 80))
    t0 = draw(st.integers(1_600_000_000_000, 1_700_000_000_000))
    steps = draw(st.lists(st.one_of(st.integers(1, 20_000), st.integers(MIN, 12 * MIN)), min_size=n, max_size=n))
    trades, ts = [], t0
    for i, step in enumerate(steps):
        ts += step
        trades.append((1000 + i, ts, draw(prices), draw(amounts), draw(st.booleans())))
    delays = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
    late = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    keys = [(i + (delays[i] if late[i] and i > 0 else 0), i) for i in range(n)]
    order = [trades[i] for _, i in sorted(keys)]
    cuts = sorted(set(draw(st.lists(st.integers(1, n), max_size=8))))
    return trades, order, cuts


@settings(max_examples=150, deadline=None)
@given(late_runs())
def test_late_trades_re_derive_every_timeframe_and_the_flat_candles_after_them(run):
    """Every final revision equals direct aggregation of all trades (late ones included); flat candles — emitted for
    buckets a late trade filled later, or after such a bucket — end at the previous bucket's close."""
    trades, order, cuts = run
    builder = SeriesBuilder(TFS, flat_candles=True, lateness_ms=10**12)
    out: list = []
    prev = 0
    for cut in [*cuts, len(order)]:
        builder.add_trades(order[prev:cut], out)
        prev = cut
    builder.advance(trades[-1][1], out, final=True)
    assert builder.late_dropped == 0
    for tf in TFS:
        versions: dict[int, list[int]] = {}
        for t, bar in out:
            if t == tf:
                versions.setdefault(bar.ts, []).append(bar.revision)
        for ts, revs in versions.items():  # a first version, then revisions numbered one by one
            assert revs == list(range(len(revs))), (tf, ts, revs)
    by = latest(out)
    for tf in TFS:
        expected = direct(trades, LEN[tf])
        got = by[tf]
        assert {ts: as_tuple(b) for ts, b in got.items() if b.trades} == expected, tf
        first, last = min(expected), max(expected)
        assert sorted(got) == list(range(first, last + 1, LEN[tf])), tf
        for ts in sorted(got):
            if not got[ts].trades:
                before = expected[max(b for b in expected if b < ts)][3]
                bar = got[ts]
                assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == (before,) * 4 + (0,), (tf, ts)


def test_a_late_trade_in_an_empty_minute_revises_it_and_the_flat_minutes_after_it():
    t0 = 1_700_000_000_000 // (5 * MIN) * (5 * MIN)
    builder = SeriesBuilder(["1m", "5m"], lateness_ms=60 * MIN)
    out: list = []
    builder.add_trades([(1, t0 + 1000, Decimal(10), Decimal(1), True)], out)  # minute 0: close 10
    builder.add_trades([(3, t0 + 4 * MIN + 5, Decimal(30), Decimal(1), True)], out)  # minutes 1-3 flat at 10
    builder.add_trades([(2, t0 + MIN + 7, Decimal(20), Decimal(2), False)], out)  # late: minute 1 had a trade
    ones = {b.ts: b for tf, b in out if tf == "1m"}
    assert ones[t0 + MIN].revision == 1 and (ones[t0 + MIN].open, ones[t0 + MIN].volume) == (Decimal(20), 2)
    for m in (2, 3):  # the flat minutes after it now carry its close
        bar = ones[t0 + m * MIN]
        assert bar.revision == 1 and bar.open == bar.high == bar.low == bar.close == Decimal(20)
    builder.advance(t0 + 6 * MIN + 1, out)  # minute 5 is empty: flat at minute 4's close
    assert [b for tf, b in out if tf == "1m"][-1].close == Decimal(30)
    five = [b for tf, b in out if tf == "5m"][-1]
    assert (five.open, five.close, five.volume, five.revision) == (Decimal(10), Decimal(30), Decimal(4), 0)


@settings(max_examples=60, deadline=None)
@given(trade_runs(), st.booleans())
def test_last_closed_is_the_newest_closed_bar_before_the_one_in_progress(run, flat):
    """What in-progress candles carry as ``prev_ts``: with or without flat candles, after every batch and across a
    dump/restore, the start of the newest bar emitted (closed) so far, older than that timeframe's bar in progress."""
    import msgpack

    trades, cuts = run
    builder = SeriesBuilder(TFS, flat_candles=flat)
    out: list = []
    prev = 0
    for n, cut in enumerate([*cuts, len(trades)]):
        builder.add_trades(trades[prev:cut], out)
        prev = cut
        if n == 1:
            restored = SeriesBuilder(TFS, flat_candles=flat)
            restore_state(restored, msgpack.unpackb(msgpack.packb(dump_state(builder))))
            builder = restored
        closed = {}
        for tf, bar in out:
            closed[tf] = max(closed.get(tf, bar.ts), bar.ts)
        live = dict(in_progress(builder))
        for tf in TFS:
            assert last_closed(builder, tf) == closed.get(tf)
            if tf in live and tf in closed:
                assert closed[tf] < live[tf].ts
