"""The window of one series: its closed candles kept, the ticker as of each bar's close, the indicators over them.

A *series* is one (exchange, symbol, timeframe). Its ``CandleWindow`` keeps the last ``keep`` closed candles (enough
for the longest look-back of the rules reading it); an in-progress candle can be put on top for one intrabar
evaluation (``push_provisional``) and taken off again. Conditions read a window through three views with the same
shape (``View``: ``candles``, ``tickers``, ``outs`` — each indicator's values by ``indicators.number`` —, all read
from the end, ``shift`` bars back): the window itself (its last bar), ``WindowAsOf`` (the window as it was at an
earlier close: later bars hidden) and ``TickView`` (one trade or ticker on top of the window's last closed bar).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from decimal import Decimal
from operator import attrgetter
from typing import Any, ClassVar, Protocol

from services.alert_engine.core import indicators
from services.alert_engine.core.feeds import PairFeeds
from shared import rules as r
from shared.rules import TICKER_FIELDS, IndicatorSpec
from shared.schemas import Candle, Ticker
from shared.timeframes import timeframe_ms

SeriesKey = tuple[str, str, str]  # exchange, symbol, timeframe
_BPS = Decimal(10_000)
_TWO = Decimal(2)


def ticker_value(t: Ticker | None, name: str) -> Decimal | None:
    """A ticker field of the rule language (``bid ask mid spread spread_bps last``); None where it is unknown."""
    if t is None:
        return None
    if name == "last":
        return t.last
    if name == "bid":
        return t.bid
    if name == "ask":
        return t.ask
    if t.bid is None or t.ask is None:
        return None
    mid = (t.bid + t.ask) / _TWO
    if name == "mid":
        return mid
    if name == "spread":
        return t.ask - t.bid
    return (t.ask - t.bid) / mid * _BPS if mid else None  # spread_bps


def _field(name: str) -> Callable[[Candle], Any]:
    if name == "delta":
        return lambda c: c.delta
    if name == "trades":
        return lambda c: Decimal(c.trades)
    return attrgetter("close" if name == "price" else name)


#: the candle fields of the rule language (``price`` is the close; ``trades`` a Decimal like every other)
CANDLE_FIELDS: dict[str, Callable[[Candle], Any]] = {name: _field(name) for name in r.CANDLE_FIELDS}


class View(Protocol):
    """What a condition reads: sequences read from the end (``[-1 - shift]`` is the bar evaluated)."""

    @property
    def key(self) -> SeriesKey: ...

    @property
    def tf_ms(self) -> int: ...

    @property
    def shift(self) -> int: ...

    @property
    def window(self) -> CandleWindow: ...  # (where indicators are made)

    @property
    def candles(self) -> Sequence[Any]: ...

    @property
    def tickers(self) -> Sequence[Ticker | None]: ...

    @property
    def outs(self) -> Outs: ...

    @property
    def feeds(self) -> PairFeeds | None: ...  # the pair's book / futures state (a book or futures update's view)


class Outs(Protocol):
    def get(self, n: int) -> Sequence[Any] | None: ...


class CandleWindow:
    """The closed candles kept of one series (oldest first), the ticker as of each bar, and its indicators."""

    shift: ClassVar[int] = 0
    feeds: ClassVar[PairFeeds | None] = None

    def __init__(self, key: SeriesKey, keep: int = 600) -> None:
        self.key = key
        self.tf_ms = timeframe_ms(key[2])
        self.keep = keep
        self.window = self
        self.candles: deque[Candle] = deque(maxlen=keep)
        self.tickers: deque[Ticker | None] = deque(maxlen=keep)  # the latest ticker as of each bar's close
        self.indicators: dict[IndicatorSpec, indicators.Indicator] = {}  # spec -> the computation it reads
        self._computations: dict[Hashable, indicators.Indicator] = {}  # (each once)
        self.outs: dict[int, deque[Any]] = {}  # each spec's values, by ``indicators.number(spec)``
        self.provisional = False  # the last bar is an in-progress candle pushed for one intrabar evaluation
        # closed candles older than the last bar (a backfill, or a late revision of a kept bar) not merged yet:
        # ``merge_older`` merges them (the engine does, before its next evaluation)
        self.older: list[Candle] = []
        # bars closing by this exchange time hold their final ticker (a ticker past their close had been read)
        self.tickers_final = -1

    # ---- keeping candles --------------------------------------------------------------------------------------------

    def resize(self, keep: int) -> None:
        """Keep up to ``keep`` candles from now on; indicators are rebuilt to keep as many values."""
        self.keep = keep
        self.candles = deque(self.candles, maxlen=keep)
        self.tickers = deque(self.tickers, maxlen=keep)
        self.rebuild()

    def rebuild(self) -> None:
        """Recompute every indicator from scratch over the kept candles (O(kept bars), once)."""
        specs = list(self.indicators)
        self.indicators, self._computations, self.outs = {}, {}, {}
        for spec in specs:
            self.indicator(spec)

    def indicator(self, spec: IndicatorSpec) -> indicators.Indicator:
        """The indicator ``spec`` over this window, made (and warmed up from the kept candles) on first use."""
        ind = self.indicators.get(spec)  # frozen models hash and compare by value: equal specs share one
        if ind is None:
            key, output = indicators.computation(spec)
            ind = self._computations.get(key)
            if ind is None:
                closed = list(self.candles)[:len(self.candles) - self.provisional]
                ind = self._computations[key] = indicators.make(spec, self.keep, closed)
                if self.provisional:
                    ind.add_provisional(self.candles[-1], indicators.floats(self.candles[-1]))
            self.indicators[spec] = ind
            self.outs[indicators.number(spec)] = ind.outs[output]
        return ind

    def push(self, candle: Candle, ticker: Ticker | None) -> bool:
        """Add a closed candle, or replace the last one (a revision). False when it is not to be evaluated: an older
        revision of the last bar, or a bar older than the last one (kept in ``older`` for ``merge_older``)."""
        if self.provisional:
            self.pop_provisional()
        candles = self.candles
        if candles and candle.ts <= candles[-1].ts:
            if candle.ts < candles[-1].ts:
                self.older.append(candle)  # a backfill: merged, never evaluated
                return False
            if candle.revision < candles[-1].revision:
                return False
            candles[-1] = candle
            self.tickers[-1] = ticker
            self.rebuild()  # (a revision: the streams cannot step back)
            return True
        candles.append(candle)
        self.tickers.append(ticker)
        if self.indicators:
            f = indicators.floats(candle)
            for ind in self._computations.values():
                ind.add(candle, f)
        return True

    def push_provisional(self, candle: Candle, ticker: Ticker | None) -> bool:
        """Put an in-progress candle on top for one evaluation (``pop_provisional`` takes it off)."""
        if self.provisional:
            self.pop_provisional()
        if self.candles and candle.ts <= self.candles[-1].ts:
            return False
        self.candles.append(candle)
        self.tickers.append(ticker)
        if self.indicators:
            f = indicators.floats(candle)
            for ind in self._computations.values():
                ind.add_provisional(candle, f)
        self.provisional = True
        return True

    def pop_provisional(self) -> None:
        self.candles.pop()
        self.tickers.pop()
        for ind in self._computations.values():
            ind.drop_provisional()
        self.provisional = False

    def last_closed(self) -> Candle | None:
        """The last closed candle (under an in-progress one on top)."""
        n = len(self.candles) - self.provisional
        return self.candles[n - 1] if n > 0 else None

    def merge_older(self, ticker_at: Callable[[int], Ticker | None]) -> bool:
        """Merge ``older`` into the kept candles in ts order (the highest revision of a bucket wins; the newest
        ``keep`` buckets are kept) and rebuild the indicators; True if the kept candles changed.

        Nothing is evaluated: bars already evaluated keep their firing / crossing / cooldown state, and later bars
        read indicators as if the series had had the merged history from the start. ``ticker_at(close)``: the ticker
        as of a merged bar's close (bars already kept keep theirs).
        """
        older, self.older = self.older, []
        if self.provisional:
            self.pop_provisional()
        kept: dict[int, tuple[Candle, Ticker | None]] = {c.ts: (c, t) for c, t in zip(self.candles, self.tickers)}
        floor = self.candles[0].ts if len(self.candles) >= self.keep else None  # a full window keeps nothing older
        changed = False
        for candle in older:
            have = kept.get(candle.ts)
            if have is None:
                if floor is not None and candle.ts < floor:
                    continue
                kept[candle.ts] = (candle, ticker_at(candle.ts + self.tf_ms))
                changed = True
            elif candle.revision > have[0].revision:
                kept[candle.ts] = (candle, have[1])
                changed = True
        if not changed:
            return False
        order = sorted(kept)[-self.keep:]
        self.candles = deque((kept[ts][0] for ts in order), maxlen=self.keep)
        self.tickers = deque((kept[ts][1] for ts in order), maxlen=self.keep)
        self.rebuild()
        return True

    # ---- what messages and tests read (conditions read the sequences: ``conditions.getter``) -----------------------

    def value(self, operand: Any, offset: int = 0) -> Any:
        """Any operand ``offset`` bars back: a number, a candle or ticker field, an indicator; None if unknown."""
        return read(self, operand, offset)

    def as_of(self, now: int) -> CandleWindow | WindowAsOf:
        """This window as it was at exchange time ``now``: its bars closed by then (later ones hidden)."""
        candles, tf = self.candles, self.tf_ms
        if not candles or candles[-1].ts + tf <= now:
            return self
        shift = 1
        while shift < len(candles) and candles[-1 - shift].ts + tf > now:
            shift += 1
        return WindowAsOf(self, shift)


class WindowAsOf:
    """A window seen ``shift`` bars back (as of an earlier close)."""

    __slots__ = ("window", "shift", "key", "tf_ms", "candles", "tickers", "outs")
    feeds = None

    def __init__(self, window: CandleWindow, shift: int) -> None:
        self.window, self.shift, self.key, self.tf_ms = window, shift, window.key, window.tf_ms
        self.candles, self.tickers, self.outs = window.candles, window.tickers, window.outs

    def value(self, operand: Any, offset: int = 0) -> Any:
        return read(self, operand, offset)


class _Trade:
    """A trade (or ticker) as a bar for ``TickView``: its price is the close; nothing else is known."""

    __slots__ = ("close",)
    ts = None

    def __init__(self, price: Decimal | None) -> None:
        self.close = price


class _Held:
    """Indicator values at a trade or ticker: the last closed bar's, one step back too."""

    __slots__ = ("outs",)

    def __init__(self, outs: dict[int, deque[Any]]) -> None:
        self.outs = outs

    def get(self, n: int) -> tuple[Any, Any] | None:
        out = self.outs.get(n)
        if out is None:
            return None
        v = out[-1] if out else None
        return v, v


class TickView:
    """A window at one trade or ticker: ``price``/``close`` and ticker fields are the trade's / ticker's (one step
    back: the previous one's); indicators hold their value of the last closed bar; other candle fields are unknown."""

    __slots__ = ("window", "key", "tf_ms", "candles", "tickers", "outs")
    shift = 0
    feeds = None

    def __init__(self, window: CandleWindow, price: Decimal | None, prev_price: Decimal | None, ticker: Ticker | None,
                 prev_ticker: Ticker | None) -> None:
        self.window, self.key, self.tf_ms = window, window.key, window.tf_ms
        self.candles = (_Trade(prev_price), _Trade(price))
        self.tickers = (prev_ticker, ticker)
        self.outs = _Held(window.outs)


class FeedView:
    """A window at one book or futures update of its pair: book and futures operands read ``feeds`` (one step back:
    the previous update of the same kind); candle fields, tickers and indicators the window's last closed bar."""

    __slots__ = ("window", "key", "tf_ms", "candles", "tickers", "outs", "feeds")
    shift = 0

    def __init__(self, window: CandleWindow, feeds: PairFeeds) -> None:
        self.window, self.key, self.tf_ms, self.feeds = window, window.key, window.tf_ms, feeds
        self.candles, self.tickers, self.outs = window.candles, window.tickers, window.outs

    def value(self, operand: Any, offset: int = 0) -> Any:
        return read(self, operand, offset)


def read(view: View, operand: Any, offset: int = 0) -> Any:
    """``operand``'s value in ``view``, ``offset`` bars back (the slow, general read; conditions compile theirs)."""
    if isinstance(operand, Decimal):
        return operand
    if r.feed_kind(operand):
        return view.feeds.value(operand, offset) if view.feeds is not None else None
    i = offset + view.shift
    if isinstance(operand, IndicatorSpec):
        n = indicators.number(operand)
        out = view.outs.get(n)
        if out is None:
            view.window.indicator(operand)
            out = view.outs.get(n)
        return out[-1 - i] if out is not None and i < len(out) else None
    if operand in TICKER_FIELDS:
        tickers = view.tickers
        return ticker_value(tickers[-1 - i], operand) if i < len(tickers) else None
    candles = view.candles
    return CANDLE_FIELDS[operand](candles[-1 - i]) if i < len(candles) else None
