"""What the engine has read of the market: every series' window, every pair's tickers and last trade price, and
every pair's book and futures state (``feeds.PairFeeds``).

Tickers are kept as a short log per pair so a closed bar gets the ticker as of its close (the last one at or before
it), whatever order the streams were read in. Backfilled candles (older than a window's last bar, which candle_builder
appends after newer ones when a look-back grows) are merged into the windows by ``rewarm``: indicators rebuilt over
the merged candles, nothing evaluated.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from decimal import Decimal

from services.alert_engine.core.feeds import PairFeeds
from services.alert_engine.core.window import CandleWindow, SeriesKey
from shared.schemas import Candle, Ticker
from shared.timeframes import bucket_start

Pair = tuple[str, str]  # exchange, symbol
TICKER_LOG = 4096  # tickers kept per pair for "as of a bar's close"


class Market:
    """The windows (``keep`` candles each, at least) and the tickers and trade prices read so far."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.windows: dict[SeriesKey, CandleWindow] = {}
        self.tickers: dict[Pair, Ticker] = {}  # the latest per pair
        self.prev_tickers: dict[Pair, Ticker] = {}  # the one before it (a tick-level crossing's "previous")
        self.ticker_logs: dict[Pair, deque[Ticker]] = {}
        self.last_prices: dict[Pair, Decimal] = {}  # the last trade price per pair
        self.stale: set[SeriesKey] = set()  # windows holding backfilled candles not merged yet
        self.feeds: dict[Pair, PairFeeds] = {}
        self.feed_horizon_ms = 0  # the longest window of the rules' open-interest and liquidation operands

    def pair_feeds(self, pair: Pair) -> PairFeeds:
        """The book and futures state of ``pair`` (made empty on first use)."""
        f = self.feeds.get(pair)
        if f is None:
            f = self.feeds[pair] = PairFeeds(self.feed_horizon_ms)
        return f

    def set_feed_horizon(self, ms: int) -> None:
        self.feed_horizon_ms = ms
        for f in self.feeds.values():
            f.horizon_ms = ms

    def window(self, key: SeriesKey) -> CandleWindow:
        """The window of series ``key`` (made empty on first use)."""
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = CandleWindow(key, self.keep)
        return w

    def add_ticker(self, ticker: Ticker) -> bool:
        """Keep ``ticker``; False (ignored) when older than the pair's latest."""
        pair = (ticker.exchange, ticker.symbol)
        last = self.tickers.get(pair)
        if last is not None and ticker.ts < last.ts:
            return False
        self.tickers[pair] = ticker
        log = self.ticker_logs.get(pair)
        if log is None:
            log = self.ticker_logs[pair] = deque(maxlen=TICKER_LOG)
        log.append(ticker)
        return True

    def ticker_as_of(self, pair: Pair, now: int) -> Ticker | None:
        """The pair's last ticker at or before exchange time ``now``."""
        log = self.ticker_logs.get(pair)
        if not log:
            return None
        for i in range(len(log) - 1, -1, -1):
            if log[i].ts <= now:
                return log[i]
        return None

    def push(self, candle: Candle) -> CandleWindow | None:
        """Store a closed candle; its window when the bar is to be evaluated, else None (a backfill, an older
        revision, or a history candle: ``candle.history`` only warms indicators up)."""
        key = (candle.exchange, candle.symbol, candle.timeframe)
        w = self.window(key)
        pair = key[:2]
        ticker = self.ticker_as_of(pair, candle.ts + w.tf_ms) if pair in self.ticker_logs else None
        if w.push(candle, ticker):
            return None if candle.history else w
        if w.older:  # a backfill: merged before the next evaluation (a batch of them costs one rebuild)
            self.stale.add(key)
        return None

    def rewarm(self) -> list[SeriesKey]:
        """Merge the backfilled candles each stale window received (ts order, indicators rebuilt from scratch);
        returns the series whose window changed. Never evaluates: no alert for a historical bar, and the firing /
        crossing / cooldown state of bars already evaluated is untouched."""
        out: list[SeriesKey] = []
        for key in sorted(self.stale):
            w = self.windows.get(key)
            if w is None or not w.older:
                continue
            pair = key[:2]
            if w.merge_older(lambda close: self.ticker_as_of(pair, close)):
                out.append(key)
        self.stale.clear()
        return out

    def merge(self, key: SeriesKey, candles: Iterable[Candle]) -> bool:
        """Merge closed candles of ``key`` read from elsewhere (its stream, on a grown look-back or a backfill) into
        its window: those newer than its last bar are ignored (the consumer delivers them), older ones and higher
        revisions are merged (``rewarm``). True if the window changed."""
        w = self.window(key)
        last = w.last_closed()
        older = [c for c in candles if c.closed and (last is None or c.ts <= last.ts)]
        if not older:
            return False
        w.older.extend(older)
        self.stale.add(key)
        return key in self.rewarm()

    # ---- has the market reached a close? (rules reading other series wait for it) ----------------------------------

    def reached(self, key: SeriesKey, close: int) -> bool:
        """Series ``key`` has delivered its last bar closing at or before exchange time ``close``."""
        w = self.windows.get(key)
        last = w.last_closed() if w is not None else None
        return last is not None and last.ts + w.tf_ms >= bucket_start(close, w.tf_ms)  # type: ignore[union-attr]

    def ready(self, refs: Iterable[SeriesKey], pairs: Iterable[Pair], close: int) -> bool:
        """Every series in ``refs`` has delivered its bar closing by ``close``, and every pair in ``pairs`` a ticker
        after it (tickers of a pair come in order: none at or before ``close`` is still to come)."""
        for key in refs:
            if not self.reached(key, close):
                return False
        for pair in pairs:
            t = self.tickers.get(pair)
            if t is None or t.ts <= close:
                return False
        return True

    def refresh_tickers(self, keys: Iterable[SeriesKey], close: int) -> None:
        """Set the ticker of every kept bar of ``keys`` closing by ``close`` to the last one at or before its close
        (when the bar was stored, its ticker stream may not have been read that far)."""
        for key in keys:
            w = self.windows.get(key)
            pair = key[:2]
            log = self.ticker_logs.get(pair)
            if w is None or not log:
                continue
            candles, tickers, tf = w.candles, w.tickers, w.tf_ms
            for i in range(len(candles) - 1 - w.provisional, -1, -1):
                end = candles[i].ts + tf
                if end <= w.tickers_final or end < log[0].ts:
                    break  # final already / before the log kept (its stored ticker stays)
                if end <= close:
                    tickers[i] = self.ticker_as_of(pair, end)
            if self.ready((), (pair,), close):
                w.tickers_final = max(w.tickers_final, close)
