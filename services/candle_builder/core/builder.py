"""``SeriesBuilder``: the candles of every timeframe of one (exchange, symbol) from its trades, in exchange order
(the package docstring tells how: base candle, derived timeframes, closing, late trades, gaps)."""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from services.candle_builder.bars import _CTX, _ZERO, Bar, bar_from_history
from services.candle_builder.core.state import PackedBars
from shared.feed_codec import trade_rows
from shared.schemas import FeedMessage, GapMarker, TradeBatch, Watermark
from shared.timeframes import bucket_start, sort_timeframes, timeframe_ms

__all__ = ["Bar", "Emitted", "SeriesBuilder", "bar_from_history", "base_timeframe"]


#: What the builder emits: (timeframe, snapshot of a closed bar). A revision has ``revision`` > 0.
Emitted = tuple[str, Bar]
#: A trade as the builder takes it: (id, exchange ts ms, price, amount, taker bought?).
TradeRow = tuple[Any, int, Decimal, Decimal, Any]


def base_timeframe(timeframes: Iterable[str], preferred: str = "1m") -> str:
    """The base every timeframe can be rolled up from: 1s if 1s is wanted, else ``preferred``."""
    return "1s" if "1s" in set(timeframes) else preferred


class SeriesBuilder:
    """Candles of every timeframe of one (exchange, symbol) from its trades, in exchange order.

    Methods return (or append to ``out``) closed candles as ``(timeframe, Bar)``; a bar is emitted once when it
    closes, and again (``revision`` + 1) only when a late trade changed it.
    """

    def __init__(self, timeframes: Iterable[str], *, base: str = "1m", flat_candles: bool = True,
                 lateness_ms: int = 0, max_flat: int = 100_000) -> None:
        tfs = sort_timeframes(list(timeframes))
        self.base_tf = base_timeframe(tfs, base)
        self.base_ms = timeframe_ms(self.base_tf)
        self.flat_candles = flat_candles
        self.lateness_ms = lateness_ms
        self.max_flat = max_flat
        self.emit_base = self.base_tf in tfs
        self.derived: dict[str, int] = {}  # timeframe -> length ms
        self.cur: dict[str, Bar | None] = {}  # derived timeframe -> bucket in progress
        self.start_at: dict[str, int] = {}  # derived timeframe -> first bucket it covers fully
        self.recent: dict[str, dict[int, Bar]] = {self.base_tf: {}}  # closed bars kept for revisions
        self.base: Bar | None = None
        self.last_close: Decimal | None = None  # close of the last closed base bar (flat candles carry it)
        self.last_base_ts: int | None = None  # start of the last closed (or flat) base bucket
        self.closed_until = 0  # every base bucket ending at or before this is closed
        self.hwm = 0  # newest exchange time seen (trade or watermark)
        self.gaps: list[tuple[int, int]] = []  # recent gap intervals (ms, inclusive) that flag candles incomplete
        self.late_revised = 0
        self.packed = PackedBars()  # ``recent`` as the saved state holds it (``core.state``): told of every change
        self.late_dropped = 0
        # timeframe -> oldest bucket its published candles cover (history included): a larger look-back is fetched
        # from before it (``backfill``)
        self.history_from: dict[str, int] = {}
        self._revised: dict[tuple[str, int], Bar] = {}
        for tf in tfs:
            if tf != self.base_tf:
                self.add_timeframe(tf)

    @property
    def timeframes(self) -> list[str]:
        return ([self.base_tf] if self.emit_base else []) + list(self.derived)

    # ---- configuration ---------------------------------------------------------------------------------------------

    def add_timeframe(self, tf: str) -> None:
        """Start deriving ``tf``; a bucket already under way is skipped (it would be partial)."""
        if tf == self.base_tf:
            self.emit_base = True
            return
        if tf in self.derived:
            return
        ms = timeframe_ms(tf)
        if ms % self.base_ms:
            raise ValueError(f"timeframe {tf} cannot be derived from base {self.base_tf}")
        self.derived[tf] = ms
        self.derived = dict(sorted(self.derived.items(), key=lambda kv: kv[1]))
        self.cur[tf] = None
        self.recent[tf] = {}
        # First base bucket not yet rolled up anywhere: the open one, or the one after the last closed.
        pending = self.base.ts if self.base is not None else (
            self.last_base_ts + self.base_ms if self.last_base_ts is not None else None)
        if pending is None:
            self.start_at[tf] = 0
        else:
            start = bucket_start(pending, ms)
            self.start_at[tf] = start if start == pending else start + ms
            self.history_from[tf] = self.start_at[tf]

    def remove_timeframe(self, tf: str) -> None:
        if tf == self.base_tf:
            self.emit_base = False
            return
        for table in (self.derived, self.cur, self.start_at, self.recent, self.history_from):
            table.pop(tf, None)

    # ---- input -----------------------------------------------------------------------------------------------------

    def apply(self, msg: FeedMessage, out: list[Emitted]) -> None:
        """One trades-stream entry: trades aggregated, a watermark advances exchange time, a gap flags its candles.
        The only way entries reach a builder."""
        if isinstance(msg, TradeBatch):
            self.add_trades(trade_rows(msg.trades), out)
        elif isinstance(msg, Watermark):
            self.advance(msg.ts, out, final=msg.final)
        elif isinstance(msg, GapMarker):
            self.gap(msg.start, msg.end, out)

    def add_trades(self, rows: Iterable[TradeRow], out: list[Emitted]) -> None:
        """Aggregate trades ``(id, ts_ms, price, amount, taker_is_buy)`` (Decimal price/amount) in exchange order."""
        with decimal.localcontext(_CTX):  # exact: 60 digits, so + and * below never round
            self._add_trades(rows, out)
        self.flush_revisions(out)

    def _add_trades(self, rows: Iterable[TradeRow], out: list[Emitted]) -> None:
        base_ms = self.base_ms
        bar = self.base
        if bar is not None:
            start, end = bar.ts, bar.end
            h, lo, v, bv, sv, qv, n = bar.high, bar.low, bar.volume, bar.buy_volume, bar.sell_volume, \
                bar.quote_volume, bar.trades
            c, lid, lts = bar.close, bar.last_id, bar.last_ts
        else:
            start = end = -1
            h = lo = v = bv = sv = qv = c = _ZERO
            n, lid, lts = 0, None, 0
        for tid, ts, price, amount, is_buy in rows:
            if start <= ts < end:  # the hot path: a trade of the open base bucket
                if ts < lts and bar is not None:  # rare: out of order inside the open bucket (bar is set then)
                    bar.high, bar.low, bar.volume, bar.buy_volume, bar.sell_volume, bar.quote_volume = \
                        h, lo, v, bv, sv, qv
                    bar.trades, bar.close, bar.last_id, bar.last_ts = n, c, lid, lts
                    bar.apply_late(tid, ts, price, amount, bool(is_buy))
                    h, lo, v, bv, sv, qv, n = bar.high, bar.low, bar.volume, bar.buy_volume, bar.sell_volume, \
                        bar.quote_volume, bar.trades
                    continue
                if price > h:
                    h = price
                elif price < lo:
                    lo = price
                v += amount
                if is_buy:
                    bv += amount
                else:
                    sv += amount
                qv += price * amount
                n += 1
                c = price
                lid = tid
                lts = ts
                continue
            if bar is not None:  # write the locals back before leaving the open bucket
                bar.high, bar.low, bar.volume, bar.buy_volume, bar.sell_volume, bar.quote_volume, bar.trades = \
                    h, lo, v, bv, sv, qv, n
                bar.close, bar.last_id, bar.last_ts = c, lid, lts
            if ts < self.closed_until or (bar is not None and ts < start):
                self._late(tid, ts, price, amount, bool(is_buy))
                continue
            self.advance(ts, out)
            bs = ts - ts % base_ms
            bar = self.base = Bar(bs, bs + base_ms, price)
            bar.first_id = lid = tid
            bar.first_ts = lts = ts
            bar.incomplete = self._in_gap(bs, bs + base_ms)
            start, end = bs, bs + base_ms
            h = lo = c = price
            v = amount
            bv, sv = (amount, _ZERO) if is_buy else (_ZERO, amount)
            qv = price * amount
            n = 1
        if bar is not None:
            bar.high, bar.low, bar.volume, bar.buy_volume, bar.sell_volume, bar.quote_volume, bar.trades = \
                h, lo, v, bv, sv, qv, n
            bar.close, bar.last_id, bar.last_ts = c, lid, lts

    def advance(self, ts: int, out: list[Emitted], *, final: bool = False) -> None:
        """Exchange time reached ``ts``: close what ended at or before it (everything when ``final``)."""
        if ts > self.hwm:
            self.hwm = ts
        base_ms = self.base_ms
        bar = self.base
        if bar is not None and (ts >= bar.end or final):
            self.base = None
            self.close_base(bar, out)
        if self.flat_candles and self.last_close is not None and self.last_base_ts is not None:
            b = self.last_base_ts + base_ms
            limit = self.max_flat
            while b + base_ms <= ts and limit > 0:
                flat = Bar(b, b + base_ms, self.last_close)
                flat.incomplete = self._in_gap(b, b + base_ms)
                self.close_base(flat, out)
                b += base_ms
                limit -= 1
            if b + base_ms <= ts:  # a jump longer than max_flat buckets: resume flat candles from here
                self.last_base_ts = (ts - ts % base_ms) - base_ms
        closed_until = ts - ts % base_ms
        if final:
            closed_until = max(closed_until, self.closed_until)
            if self.last_base_ts is not None:
                closed_until = max(closed_until, self.last_base_ts + base_ms)
        if closed_until > self.closed_until:
            self.closed_until = closed_until
        for tf in self.derived:
            cur = self.cur[tf]
            if cur is not None and (ts >= cur.end or final):
                self.cur[tf] = None
                self.emit(tf, cur, out)
        self._prune()
        self.flush_revisions(out)

    def gap(self, start: int, end: int, out: list[Emitted]) -> None:
        """Trades in [start, end] (ms) are missing: flag open and future candles there, revise closed ones."""
        self.gaps.append((start, end))
        self.gaps = self.gaps[-16:]
        if self.base is not None and self.base.ts <= end and start < self.base.end:
            self.base.incomplete = True
        for tf, cur in self.cur.items():
            if cur is not None and cur.ts <= end and start < cur.end:
                cur.incomplete = True
        for tf, bars in self.recent.items():
            for bar in bars.values():
                if bar.ts <= end and start < bar.end and not bar.incomplete:
                    self.packed.touch(tf, bar.ts)
                    bar.incomplete = True
                    bar.revision += 1
                    self._revised[(tf, bar.ts)] = bar
        self.flush_revisions(out)

    # ---- closing and internals -------------------------------------------------------------------------------------

    def _in_gap(self, start: int, end: int) -> bool:
        for g0, g1 in self.gaps:
            if g0 < end and start <= g1:
                return True
        return False

    def close_base(self, bar: Bar, out: list[Emitted]) -> None:
        """A closed base bar (built here, flat, or from history): the last close, emitted (kept only, when the base
        timeframe is not wanted) and rolled up into the bucket of every derived timeframe."""
        self.last_close = bar.close
        self.last_base_ts = bar.ts
        if bar.end > self.closed_until:
            self.closed_until = bar.end
        if self.emit_base:
            self.emit(self.base_tf, bar, out)
        else:
            self._keep(self.base_tf, bar)
        for tf, ms in self.derived.items():
            d = bar.ts - bar.ts % ms if ms != 604_800_000 else bucket_start(bar.ts, ms)
            if d < self.start_at[tf]:
                continue
            cur = self.cur[tf]
            if cur is not None and cur.ts != d:  # cannot happen in order; close defensively
                self.cur[tf] = None
                self.emit(tf, cur, out)
                cur = None
            if cur is None:
                prev = self.recent[tf].get(d)
                if prev is not None:  # bucket closed early (final watermark) and trades came after: revise it
                    self.packed.touch(tf, d)
                    prev.merge(bar)
                    if (tf, d) not in self._revised:
                        prev.revision += 1
                        self._revised[(tf, d)] = prev
                    continue
                self.cur[tf] = bar.copy(d, d + ms)
            else:
                cur.merge(bar)

    def emit(self, tf: str, bar: Bar, out: list[Emitted]) -> None:
        """A closed bar of ``tf``: kept for revisions and appended to ``out`` as a snapshot."""
        if tf not in self.history_from:
            self.history_from[tf] = bar.ts
        self._keep(tf, bar)
        out.append((tf, bar.copy()))  # a snapshot: a later revision must not change what was emitted

    def _keep(self, tf: str, bar: Bar) -> None:
        self.recent[tf][bar.ts] = bar
        self.packed.touch(tf, bar.ts)

    def _prune(self) -> None:
        """Keep closed bars a late trade may still revise (and the last one of each timeframe)."""
        horizon = self.hwm - self.lateness_ms
        for tf, bars in self.recent.items():
            if len(bars) > 1:
                for ts in [ts for ts, b in bars.items() if b.end <= horizon]:
                    if len(bars) > 1:
                        del bars[ts]
                        self.packed.touch(tf, ts)

    def _late(self, tid: Any, ts: int, price: Decimal, amount: Decimal, is_buy: bool) -> None:
        if self.hwm - ts > self.lateness_ms:
            self.late_dropped += 1
            return
        self.late_revised += 1
        base_ms = self.base_ms
        bs = ts - ts % base_ms
        if self.base is not None and self.base.ts == bs:  # an out-of-order trade of the open bucket
            self.base.apply_late(tid, ts, price, amount, is_buy)
            return
        self._revise(self.base_tf, bs, base_ms, tid, ts, price, amount, is_buy)
        for tf, ms in self.derived.items():
            d = bucket_start(ts, ms)
            if d < self.start_at[tf]:
                continue
            cur = self.cur[tf]
            if cur is not None and cur.ts == d:
                cur.apply_late(tid, ts, price, amount, is_buy)
            else:
                self._revise(tf, d, ms, tid, ts, price, amount, is_buy)

    def _revise(self, tf: str, ts0: int, ms: int, tid: Any, ts: int, price: Decimal, amount: Decimal,
                is_buy: bool) -> None:
        bars = self.recent[tf]
        bar = bars.get(ts0)
        self.packed.touch(tf, ts0)
        if bar is None:  # nothing was published for this bucket (no flat candles): a first version
            bar = Bar(ts0, ts0 + ms, price)
            bar.revision = -1
            bars[ts0] = bar
        bar.apply_late(tid, ts, price, amount, is_buy)
        key = (tf, ts0)
        if key not in self._revised:
            bar.revision += 1
            self._revised[key] = bar

    def flush_revisions(self, out: list[Emitted]) -> None:
        if self._revised:
            if self.flat_candles:
                self._carry_closes()
            for (tf, _), bar in self._revised.items():
                if tf != self.base_tf or self.emit_base:
                    out.append((tf, bar.copy()))
            self._revised.clear()

    def _carry_closes(self) -> None:
        """Revisions may have changed a close that later flat candles carried: carry the new close forward.

        A late trade that fills an empty bucket (or becomes the last trade of its bucket) changes that bucket's close;
        every flat candle after it, up to the next bucket with trades, is revised to the new close, in every
        timeframe, and so are the open flat derived candle and the close the next flat base candle will carry.
        """
        since: dict[str, int] = {}
        for tf, ts in self._revised:
            if ts < since.get(tf, ts + 1):
                since[tf] = ts
        for tf, first in since.items():
            bars = self.recent.get(tf)
            if not bars:
                continue
            prev: Decimal | None = None
            for ts in sorted(bars):
                if ts < first:
                    continue
                bar = bars[ts]
                if bar.trades or prev is None:
                    prev = bar.close
                    continue
                if bar.open != prev or bar.close != prev:
                    self.packed.touch(tf, ts)
                    bar.open = bar.high = bar.low = bar.close = prev
                    if (tf, ts) not in self._revised:
                        bar.revision += 1
                        self._revised[(tf, ts)] = bar
            if tf == self.base_tf:
                last = bars.get(self.last_base_ts) if self.last_base_ts is not None else None
                if last is not None:
                    self.last_close = last.close
            else:
                cur = self.cur.get(tf)
                if cur is not None and not cur.trades and prev is not None:
                    before = [ts for ts in bars if ts < cur.ts]
                    if before:
                        close = bars[max(before)].close
                        cur.open = cur.high = cur.low = cur.close = close

    # ---- the closing timer -----------------------------------------------------------------------------------------

    def next_close_at(self) -> int | None:
        """Exchange time at which ``advance`` would close something (None: nothing open, no flat candle due)."""
        ends = [cur.end for cur in self.cur.values() if cur is not None]
        if self.base is not None:
            ends.append(self.base.end)
        elif self.flat_candles and self.last_close is not None and self.last_base_ts is not None:
            ends.append(self.last_base_ts + 2 * self.base_ms)
        return min(ends) if ends else None
