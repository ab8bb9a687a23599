"""Pure rule evaluation: candles and tickers in, alerts to fire out. No Redis, no clock, no asyncio.

Time is exchange time: a closed candle is evaluated "at" its close (``ts + timeframe``), so a replay of a recording
behaves exactly like the live market did. ``AlertEngine.on_candle`` returns ``Fire`` records; the app gates each
through the cooldown (atomically in Redis, keyed by ``Fire.fingerprint``) and the alert-id record, then publishes.

Definitions (the tests evaluate the same ones independently with pandas):

- ``greater_than``/``less_than``: strict, on the bar.
- ``crosses_up``: previous bar ``left <= right`` and this bar ``left > right``; ``crosses_down`` mirrored;
  ``crossing``: either.
- channel ``inside``: ``lower <= left <= upper``; ``outside``: not inside; ``entering``: outside on the previous bar,
  inside now; ``exiting``: the reverse.
- ``moving_up`` by ``amount`` within ``bars``: ``left - left[bars ago] >= amount`` (``_pct``: relative, in percent);
  ``moving_down`` mirrored.
- ``volume_spike``: ``volume > factor × mean(volume of the `period` bars before this one)``.
- A rule is "firing" from the first bar its condition holds for ``for`` (exchange time since the first true bar's
  close; 0 = at once); it fires on each such bar (``every_time``, ``once_per_bar``, ``once_per_bar_close`` — on
  closed candles they coincide) or only the first time ever (``once``), subject to the cooldown; when the condition
  stops holding it resolves (an alert with state ``resolved`` if ``notify_on_resolve``).
- Intrabar (in-progress candles, ``on_live_candle``): only ``every_time`` and ``once_per_bar`` rules, which TradingView
  also evaluates on every tick; ``once_per_bar_close`` and ``once`` never see in-progress data, so they never repaint.
  An in-progress bar is evaluated only on a series holding the closed bar just before it: candle_builder publishes
  a bar's in-progress candle after closing every earlier bar, and names the last one in ``prev_ts``, so a missing
  previous bar means the engine has not read it yet (the live stream ran ahead of a backlogged candle stream in one
  read). Evaluated then, ``offset 1`` would be an older bar and every indicator window would have a hole: a crossing
  the closed bars never make. Such an in-progress candle is skipped (the closed bars, and newer in-progress candles,
  follow). ``prev_ts`` is what lets a bar after an interval without trades (``flat_candles: false``) be evaluated:
  its predecessor is several intervals back. A candle without it (older publishers) must follow its predecessor
  directly.
- Tick level (``on_trades``, ``on_ticker``): an ``every_time`` / ``once_per_bar`` rule whose condition reads ``price``
  (last trade) is evaluated on every trade, one reading ticker fields (``bid ask mid spread spread_bps last``) on
  every ticker. There ``price``/ticker fields are this trade's / ticker's, one step back is the previous trade's /
  ticker's (so ``crosses_up`` fires on the trade that crosses), and indicators hold their value of the last closed bar
  (they are computed when a candle changes state, never per trade). The alert carries the trade's (ticker's) time and
  price; ``once_per_bar`` shares its id with the bar's close evaluation, so a bar alerts once.
- Another series (a condition's ``timeframe``/``symbol``) and the ticker of a closed bar are read as of the bar's
  close: the last candle of that series closed by then, the last ticker at or before it — never later data, whatever
  order the streams were read in. A closed bar of a rule that reads tickers waits until a ticker *after* its close was
  read for each pair it reads (tickers of a pair come in order, so none at or before the close is still to come), and
  its stored tickers are refreshed from the ticker history then: in a drain or backtest the ticker stream lags the
  candle stream by whole reads (COUNT 500 tickers may span 50 s, 500 1s candles 500 s), and the alerts no longer
  depend on that (``test_alert_engine_ticks.py``, COUNT 1/7/500). Live this costs such rules the wait for the next
  ticker (bounded by ``cross_series_wait_ms``, after which the bar is evaluated with the tickers read).
- Backfilled history (candles older than a series' last bar, which candle_builder appends after newer ones when a
  look-back grows) is merged into the kept history by ``rewarm`` before the next evaluation: indicators are rebuilt
  over the merged candles, nothing is evaluated for the historical bars, no rule state changes.
- A closed bar of a rule that reads another series is evaluated once that series has delivered its bar closing at or
  before this bar's close (its last close >= the bucket start of this close in its timeframe), and, for a rule reading
  tickers, once a ticker past the close was read (above): until then the evaluation waits (``deferred``), so the
  alerts do not depend on how the streams were read or batched. Rules reading only their own candles never wait.
  A wait ends early when ``flush_deferred`` is called (the end of a drain, or the
  app's live time limit) or when the rule's queue reaches ``deferral_limit`` bars; the bar is then evaluated with what
  the other series has (as before: its last bar closed by then).
- ``snooze_until`` is wall-clock time (``clock``, injected: wall time live, exchange time in a backtest);
  ``expires_at`` is exchange time.
"""

from __future__ import annotations

import functools
import hashlib
import string
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from services.alert_engine import indicators
from services.alert_engine import rules as r
from shared.schemas import Alert, Candle, Ticker, Trade
from shared.timeframes import bucket_start, timeframe_ms

SeriesKey = tuple[str, str, str]  # exchange, symbol, timeframe
Pair = tuple[str, str]  # exchange, symbol

#: Cooldown value meaning "never again" (frequency ``once``).
FOREVER = -1
_BPS = Decimal(10_000)
_HUNDRED = Decimal(100)


def alert_id(rule: str, exchange: str, symbol: str, timeframe: str, ts: int, state: str, extra: str = "") -> str:
    """Deterministic alert id: the same data and rule give the same id in a replay."""
    raw = "\x1f".join((rule, exchange, symbol, timeframe, str(ts), state, extra))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=65_536)
def fingerprint(rule: str, exchange: str, symbol: str, timeframe: str) -> str:
    """Identity of one rule on one series: the cooldown and firing state are kept per fingerprint."""
    return hashlib.sha256("\x1f".join((rule, exchange, symbol, timeframe)).encode()).hexdigest()[:24]


@dataclass(slots=True)
class Fire:
    """An alert the rule wants to send; the app applies the cooldown and publishes it."""

    alert: Alert
    fingerprint: str
    cooldown_ms: int  # FOREVER for ``once``; resolved alerts are never cooled down (0)
    now_ms: int


@dataclass(slots=True)
class _Deferred:
    """A closed bar whose evaluation by one rule waits for the other series the rule reads."""

    candle: Candle
    close: int  # exchange time of the evaluation (the bar's close)
    since: int | None  # engine clock (wall ms) when it started waiting; None without a clock


@dataclass(slots=True)
class RuleStatus:
    """Per fingerprint: what the API shows, and what the `for:` debounce and resolve logic need."""

    rule: str
    exchange: str
    symbol: str
    timeframe: str
    state: str = "inactive"  # inactive | pending | firing
    since_ms: int | None = None  # close time of the first bar of the current true run
    last_eval_ms: int | None = None
    last_fired_ms: int | None = None
    last_value: Any = None
    fired_in_run: bool = False
    tick_bar: int | None = None  # bar a once_per_bar rule already fired in at tick level

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "exchange": self.exchange, "symbol": self.symbol, "timeframe": self.timeframe,
                "state": self.state, "since": self.since_ms, "last_eval": self.last_eval_ms,
                "last_fired": self.last_fired_ms,
                "last_value": None if self.last_value is None else str(self.last_value)}


class Series:
    """The recent closed candles of one (exchange, symbol, timeframe) and its incremental indicators."""

    def __init__(self, key: SeriesKey, keep: int = 600) -> None:
        self.key = key
        self.tf_ms = timeframe_ms(key[2])
        self.keep = keep
        self.candles: deque[Candle] = deque(maxlen=keep)
        self.tickers: deque[Ticker | None] = deque(maxlen=keep)  # latest ticker as of each bar's evaluation
        self.ind: dict[r._Indicator, indicators.Incremental] = {}
        self.provisional = False  # the last bar is an in-progress candle pushed for intrabar evaluation
        # closed candles older than the last bar (a backfill, or a late revision of a kept bar), not merged yet: see
        # ``merge_older`` (``AlertEngine.rewarm`` merges them before the next evaluation)
        self.older: list[Candle] = []
        # bars closing by this exchange time hold their final ticker (a ticker past their close had been read)
        self.tickers_final = -1

    def resize(self, keep: int) -> None:
        """Keep up to ``keep`` candles from now on; indicators are rebuilt to keep as many values."""
        self.keep = keep
        self.candles = deque(self.candles, maxlen=keep)
        self.tickers = deque(self.tickers, maxlen=keep)
        self.rebuild()

    def rebuild(self) -> None:
        """Recompute every indicator from scratch over the kept candles (O(kept bars), once)."""
        specs = list(self.ind)
        self.ind = {}
        for spec in specs:
            self.indicator(spec)

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
        floor = self.candles[0].ts if len(self.candles) >= self.keep else None  # a full deque keeps nothing older
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

    def indicator(self, spec: r._Indicator) -> indicators.Incremental:
        ind = self.ind.get(spec)  # frozen models hash and compare by value: equal specs share one indicator
        if ind is None:  # created late (e.g. after a reload): warm it up from the candles kept
            ind = self.ind[spec] = indicators.make(spec, self.keep)
            for candle in self.candles:
                ind.add(candle)
        return ind

    def push(self, candle: Candle, ticker: Ticker | None) -> bool:
        """Add a closed candle, or replace the last one (revision). False when it is not to be evaluated: an older
        revision of the last bar, or a bar older than the last one (kept in ``older`` for ``merge_older``)."""
        if self.provisional:
            self.pop_provisional()
        if self.candles and candle.ts < self.candles[-1].ts:
            self.older.append(candle)  # a backfill: merged (``merge_older``), never evaluated
            return False
        if self.candles and candle.ts == self.candles[-1].ts:
            if candle.revision < self.candles[-1].revision:
                return False
            self.candles[-1] = candle
            self.tickers[-1] = ticker
            for ind in self.ind.values():
                ind.replace(candle)
            return True
        self.candles.append(candle)
        self.tickers.append(ticker)
        for ind in self.ind.values():
            ind.add(candle)
        return True

    def push_provisional(self, candle: Candle, ticker: Ticker | None) -> bool:
        """Put an in-progress candle on top for one evaluation (undone by ``pop_provisional``)."""
        if self.provisional:
            self.pop_provisional()
        if self.candles and candle.ts <= self.candles[-1].ts:
            return False
        self.candles.append(candle)
        self.tickers.append(ticker)
        for ind in self.ind.values():
            ind.add(candle)
        self.provisional = True
        return True

    def pop_provisional(self) -> None:
        self.candles.pop()
        self.tickers.pop()
        for ind in self.ind.values():
            ind.remove()
        self.provisional = False

    def offset_at(self, ts_limit: int) -> int | None:
        """Bars back to the last bar that started at or before ``ts_limit``; None if none is kept."""
        candles = self.candles
        for off in range(len(candles)):
            if candles[-1 - off].ts <= ts_limit:
                return off
        return None

    def as_of(self, now: int) -> Series | _Shifted:
        """This series as it was at exchange time ``now``: its bars closed by then (later ones hidden)."""
        candles, tf = self.candles, self.tf_ms
        if not candles or candles[-1].ts + tf <= now:
            return self
        shift = 1
        while shift < len(candles) and candles[-1 - shift].ts + tf > now:
            shift += 1
        return _Shifted(self, shift)

    # ---- operand values ---------------------------------------------------------------------------------------------

    def value(self, operand: Any, offset: int = 0) -> Any:
        """Value of ``operand`` ``offset`` bars back (0 = last bar); None if not available (yet)."""
        if isinstance(operand, Decimal):
            return operand
        if offset >= len(self.candles):
            return None
        if isinstance(operand, str):
            if operand in r.TICKER_FIELDS:
                return _ticker_value(self.tickers[-1 - offset], operand)
            candle = self.candles[-1 - offset]
            if operand == "price":
                return candle.close
            if operand == "delta":
                return candle.delta
            if operand == "trades":
                return Decimal(candle.trades)
            return getattr(candle, operand)
        return self.indicator(operand).get(offset)


class _Shifted:
    """A series seen ``shift`` bars back (as of an earlier time): the interface conditions read."""

    __slots__ = ("series", "shift", "key", "tf_ms")

    def __init__(self, series: Series, shift: int) -> None:
        self.series, self.shift, self.key, self.tf_ms = series, shift, series.key, series.tf_ms

    def value(self, operand: Any, offset: int = 0) -> Any:
        return self.series.value(operand, offset + self.shift)

    def offset_at(self, ts_limit: int) -> int | None:
        off = self.series.offset_at(ts_limit)
        return None if off is None or off < self.shift else off - self.shift


class _Tick:
    """A series at one trade or ticker (tick-level evaluation, see the module docstring)."""

    __slots__ = ("series", "key", "tf_ms", "price", "prev_price", "ticker", "prev_ticker")

    def __init__(self, series: Series, price: Decimal | None, prev_price: Decimal | None, ticker: Ticker | None,
                 prev_ticker: Ticker | None) -> None:
        self.series, self.key, self.tf_ms = series, series.key, series.tf_ms
        self.price, self.prev_price, self.ticker, self.prev_ticker = price, prev_price, ticker, prev_ticker

    def value(self, operand: Any, offset: int = 0) -> Any:
        if isinstance(operand, Decimal):
            return operand
        if isinstance(operand, str):
            if operand in r.TICKER_FIELDS:
                return _ticker_value(self.ticker if offset == 0 else self.prev_ticker if offset == 1 else None,
                                     operand)
            if operand in ("price", "close"):
                return self.price if offset == 0 else self.prev_price if offset == 1 else None
            return None  # other candle fields are not defined at tick level (such rules are not evaluated here)
        return self.series.value(operand, 0)  # indicators: held at the last closed bar

    def offset_at(self, ts_limit: int) -> int | None:
        return None


def _ticker_value(t: Ticker | None, name: str) -> Decimal | None:
    if t is None:
        return None
    if name == "last":
        return t.last
    if name in ("bid", "ask"):
        return getattr(t, name)
    if t.bid is None or t.ask is None:
        return None
    if name == "mid":
        return (t.bid + t.ask) / 2
    if name == "spread":
        return t.ask - t.bid
    mid = (t.bid + t.ask) / 2
    return (t.ask - t.bid) / mid * _BPS if mid else None  # spread_bps


def _sub(a: Any, b: Any) -> Any:
    if isinstance(a, float) or isinstance(b, float):
        return float(a) - float(b)
    return a - b


def _scale(x: Decimal, like: Any) -> Any:
    return float(x) if isinstance(like, float) else x


@dataclass(slots=True)
class _Eval:
    ok: bool
    value: Any = None  # the left operand's value, for the message


class AlertEngine:
    """Evaluates a rule set on candles (and tickers). Feed it in exchange order per series."""

    def __init__(self, ruleset: r.RuleSet | None = None, *, keep: int = 600,
                 clock: Callable[[], int] | None = None) -> None:
        """``clock``: wall time in ms, for ``snooze_until`` (None: exchange time, as in a deterministic backtest)."""
        self.keep = keep
        self.clock = clock
        self.series: dict[SeriesKey, Series] = {}
        self.tickers: dict[tuple[str, str], Ticker] = {}
        self._ticker_hist: dict[tuple[str, str], deque[Ticker]] = {}
        self._prev_ticker: dict[tuple[str, str], Ticker] = {}
        self._last_price: dict[tuple[str, str], Decimal] = {}
        self.status: dict[str, RuleStatus] = {}
        self.rules: list[r.Rule] = []
        # (rule name, series) -> its closed bars waiting for the other series the rule reads, oldest first
        self._deferred: dict[tuple[str, SeriesKey], deque[_Deferred]] = {}
        # series holding candles older than their last bar (a backfill) not merged yet: ``rewarm`` merges them, before
        # the next evaluation reads any series (a rule may read another series than its own)
        self._stale: set[SeriesKey] = set()
        self.set_rules(ruleset or r.RuleSet())

    # ---- rules and what they need -----------------------------------------------------------------------------------

    def set_rules(self, ruleset: r.RuleSet) -> None:
        """Swap the rule set; series data (and its indicators) are kept, state of removed rules dropped."""
        self.rules = ruleset.enabled
        self._routes: dict[SeriesKey, list[r.Rule]] = {}
        self._tick_routes: dict[tuple[str, str, str], list[r.Rule]] = {}
        self._refs_cache: dict[tuple[str, SeriesKey], tuple[tuple[SeriesKey, ...], int, tuple[Pair, ...]]] = {}
        self._by_name = {rule.name: rule for rule in self.rules}
        names = {rule.name for rule in self.rules}
        self.status = {fp: s for fp, s in self.status.items() if s.rule in names}
        self._deferred = {k: q for k, q in self._deferred.items() if k[0] in names}

    def needs(self, exchange: str, symbol: str) -> set[str]:
        """Timeframes of (exchange, symbol) some rule reads (its own, and those its conditions name)."""
        out: set[str] = set()
        for rule in self.rules:
            if rule.exchange is not None and rule.exchange != exchange:
                continue
            if rule.matches(exchange, symbol):
                out.add(rule.timeframe)
                out.update(tf for tf, sym in _wheres(rule.condition) if sym is None and tf)
            for tf, sym in _wheres(rule.condition):
                if sym == symbol:
                    out.add(tf or rule.timeframe)
        return out

    def lookback(self, exchange: str, symbol: str, timeframe: str) -> int:
        """Closed candles the rules reading (exchange, symbol, timeframe) need before their first evaluation: the
        longest warm-up of their indicators and look-backs (see ``warmup_bars``). 0 when no rule reads it."""
        return max(self.lookbacks(exchange, symbol, timeframe).values(), default=0)

    def lookbacks(self, exchange: str, symbol: str, timeframe: str) -> dict[str, int]:
        """``lookback`` per rule that reads (exchange, symbol, timeframe): rule name -> closed candles."""
        tf_ms = timeframe_ms(timeframe)
        out: dict[str, int] = {}
        for rule in self.rules:
            own = rule.matches(exchange, symbol)
            for cond in _leaves(rule.condition):
                sym_ok = cond.symbol == symbol if cond.symbol is not None else own
                if sym_ok and (cond.timeframe or rule.timeframe) == timeframe:
                    out[rule.name] = max(out.get(rule.name, 0), _condition_bars(cond, tf_ms))
        return out

    def reserve(self, key: SeriesKey, bars: int) -> None:
        """Keep at least ``bars`` closed candles of series ``key`` (a rule's look-back beyond ``keep``)."""
        series = self._series(key)
        if bars > series.keep:
            series.resize(bars)

    def needs_tickers(self, exchange: str, symbol: str) -> bool:
        return any(rule.matches(exchange, symbol) and _uses_tickers(rule.condition) for rule in self.rules)

    def live_rules(self, exchange: str, symbol: str, timeframe: str) -> list[r.Rule]:
        """Rules evaluated on in-progress candles: intrabar frequencies, except those evaluated per trade/ticker."""
        ticks = self._tick_rules(exchange, symbol, "trade") + self._tick_rules(exchange, symbol, "ticker")
        return [rule for rule in self.rules
                if rule.frequency in ("every_time", "once_per_bar") and rule.timeframe == timeframe
                and rule.matches(exchange, symbol) and rule not in ticks]

    def is_tick_level(self, rule: r.Rule, exchange: str, symbol: str) -> bool:
        return rule in self._tick_rules(exchange, symbol, "trade") or rule in self._tick_rules(exchange, symbol, "ticker")

    def needs_trades(self, exchange: str, symbol: str) -> bool:
        """Some rule is evaluated on each trade of (exchange, symbol) (see ``on_trades``)."""
        return bool(self._tick_rules(exchange, symbol, "trade"))

    def _tick_rules(self, exchange: str, symbol: str, kind: str) -> list[r.Rule]:
        key = (exchange, symbol, kind)
        rules = self._tick_routes.get(key)
        if rules is None:
            wants = _reads_price if kind == "trade" else _uses_tickers
            rules = self._tick_routes[key] = [
                rule for rule in self.rules
                if rule.frequency in ("every_time", "once_per_bar") and rule.matches(exchange, symbol)
                and _tick_level(rule.condition) and wants(rule.condition)]
        return rules

    # ---- input --------------------------------------------------------------------------------------------------

    def on_ticker(self, ticker: Ticker, *, fire: bool = True) -> list[Fire]:
        """A ticker: kept for candle rules (as of each bar's close) and evaluated by tick-level ticker rules."""
        key = (ticker.exchange, ticker.symbol)
        last = self.tickers.get(key)
        if last is not None and ticker.ts < last.ts:
            return []
        self.tickers[key] = ticker
        hist = self._ticker_hist.get(key)
        if hist is None:
            hist = self._ticker_hist[key] = deque(maxlen=4096)
        hist.append(ticker)
        rules = self._tick_rules(key[0], key[1], "ticker")
        out: list[Fire] = []
        if self._deferred:  # closed bars that waited for a ticker past their close
            out.extend(self._run_deferred())
        if rules:
            if self._stale:  # tick-level rules read indicators of the last closed bar
                self.rewarm()
            prev = self._prev_ticker.get(key)
            for rule in rules:
                series = self._series((key[0], key[1], rule.timeframe))
                view = _Tick(series, self._last_price.get(key), None, ticker, prev)
                out.extend(self._evaluate_tick(rule, view, ticker.ts, ticker.last, f"ticker:{ticker.ts}"))
        self._prev_ticker[key] = ticker
        return out if fire else []

    def on_trades(self, exchange: str, symbol: str, trades: Iterable[Trade], *, fire: bool = True) -> list[Fire]:
        """Trades of (exchange, symbol) in exchange order: each is evaluated by the tick-level price rules."""
        key = (exchange, symbol)
        rules = self._tick_rules(exchange, symbol, "trade")
        if rules and self._stale:  # tick-level rules read indicators of the last closed bar
            self.rewarm()
        prev = self._last_price.get(key)
        out: list[Fire] = []
        for tid, ts, price, _, _ in trades:  # Trade tuples, or candle_builder's decoded rows (the same order)
            for rule in rules:
                series = self._series((exchange, symbol, rule.timeframe))
                view = _Tick(series, price, prev, self.tickers.get(key), self._prev_ticker.get(key))
                out.extend(self._evaluate_tick(rule, view, ts, price, f"trade:{tid}:{ts}"))
            prev = price
        if prev is not None:
            self._last_price[key] = prev
        return out if fire else []

    def _ticker_as_of(self, key: tuple[str, str], now: int) -> Ticker | None:
        hist = self._ticker_hist.get(key)
        if not hist:
            return None
        for i in range(len(hist) - 1, -1, -1):
            if hist[i].ts <= now:
                return hist[i]
        return None

    def on_batch(self, values: Iterable[Candle | Ticker], *, fire: bool = True) -> list[Fire]:
        """Candles and tickers read together, in exchange-time order: tickers by their time, closed candles by their
        close; all candles closing at one time are stored before any is evaluated, so a condition on another series
        sees that series' bar of the same close."""
        timed = []
        for n, v in enumerate(values):
            if isinstance(v, Ticker):
                timed.append((v.ts, 0, n, v))
            elif v.closed:
                timed.append((v.ts + timeframe_ms(v.timeframe), 1, n, v))
            else:
                timed.append((v.ts + timeframe_ms(v.timeframe), 2, n, v))
        timed.sort(key=lambda x: x[:3])
        out: list[Fire] = []
        i = 0
        while i < len(timed):
            t, kind, _, v = timed[i]
            if kind != 1:
                out.extend(self.on_ticker(v, fire=fire) if kind == 0 else self.on_live_candle(v, fire=fire))
                i += 1
                continue
            group = []
            while i < len(timed) and timed[i][0] == t and timed[i][1] == 1:
                group.append(timed[i][3])
                i += 1
            pushed = [(c, s) for c in group if (s := self._push(c)) is not None]
            for c, s in pushed:
                fired = self._evaluate_closed(c, s)
                if fire:
                    out.extend(fired)
        return out

    def _rules_for(self, key: SeriesKey) -> list[r.Rule]:
        rules = self._routes.get(key)
        if rules is None:
            rules = self._routes[key] = [rule for rule in self.rules
                                         if rule.timeframe == key[2] and rule.matches(key[0], key[1])]
        return rules

    def _series(self, key: SeriesKey) -> Series:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series(key, self.keep)
        return s

    def on_candle(self, candle: Candle, *, fire: bool = True) -> list[Fire]:
        """A closed (or revised) candle. ``fire=False`` warms state up without producing alerts; so does a candle
        taken from the exchange's history (``candle.history``: seeded or backfilled, not a bar that just closed)."""
        if not candle.closed:
            return self.on_live_candle(candle, fire=fire)
        series = self._push(candle)
        if series is None:
            return []
        fired = self._evaluate_closed(candle, series)
        return fired if fire else []

    def _push(self, candle: Candle) -> Series | None:
        """Store a closed candle; the series when the candle's bar is to be evaluated, else None (a backfill, or a
        history candle: ``candle.history`` only warms indicators)."""
        key = (candle.exchange, candle.symbol, candle.timeframe)
        series = self._series(key)
        ticker = self._ticker_as_of(key[:2], candle.ts + series.tf_ms) if key[:2] in self._ticker_hist else None
        if series.push(candle, ticker):
            return None if candle.history else series
        if series.older:  # a backfill: merged before the next evaluation (a batch of them costs one rebuild)
            self._stale.add(key)
        return None

    # ---- backfilled history: re-warming a series --------------------------------------------------------------------

    @property
    def stale(self) -> bool:
        """Some series holds backfilled candles not merged yet (``rewarm`` merges them)."""
        return bool(self._stale)

    def rewarm(self) -> list[SeriesKey]:
        """Merge the backfilled (older) candles each series received into its kept history, in ts order, and rebuild
        its indicators from scratch; returns the series whose history changed.

        Called by the engine itself before any evaluation while some series is stale, and by the app when it has
        nothing else to do; never evaluates, so no alert is fired for a historical bar and the firing / crossing /
        cooldown state of bars already evaluated is untouched. Bars evaluated later see indicators computed over the
        whole merged history (as a restart's warm-up would give them).
        """
        out: list[SeriesKey] = []
        for key in sorted(self._stale):
            series = self.series.get(key)
            if series is None or not series.older:
                continue
            if series.merge_older(functools.partial(self._ticker_as_of, key[:2])):
                out.append(key)
        self._stale.clear()
        return out

    def merge(self, key: SeriesKey, candles: Iterable[Candle]) -> bool:
        """Merge closed candles of series ``key`` read from elsewhere (the stream, on a grown look-back or when the
        builder's history reached further back) into its kept history: the newer ones than its last bar are ignored
        (the consumer delivers them), older ones and higher revisions are merged as a backfill (``rewarm``)."""
        series = self._series(key)
        last = series.candles[-2 if series.provisional else -1].ts if len(series.candles) > series.provisional else None
        older = [c for c in candles if c.closed and (last is None or c.ts <= last)]
        if not older:
            return False
        series.older.extend(older)
        self._stale.add(key)
        return key in self.rewarm()

    def _evaluate_closed(self, candle: Candle, series: Series) -> list[Fire]:
        if self._stale:
            self.rewarm()
        now = candle.ts + series.tf_ms
        out: list[Fire] = []
        key = series.key
        for rule in self._rules_for(key):
            refs, _, pairs = self._refs(rule, key)
            if refs or pairs:  # reads another series or tickers: wait until they reached this close (module docstring)
                queue = self._deferred.get((rule.name, key))
                if queue or not self._ready(refs, pairs, now):
                    if queue is None:
                        queue = self._deferred[(rule.name, key)] = deque()
                    queue.append(_Deferred(candle, now, None if self.clock is None else self.clock()))
                    continue
                if pairs:  # a ticker past this close was read before the bar was stored: its ticker is final
                    series.tickers_final = max(series.tickers_final, now)
            out.extend(self._evaluate(rule, series, candle, now, intrabar=False))
        if self._deferred:
            out.extend(self._run_deferred())
        return out

    # ---- rules reading other series: deferred evaluation ------------------------------------------------------------

    def _refs(self, rule: r.Rule, key: SeriesKey) -> tuple[tuple[SeriesKey, ...], int, tuple[Pair, ...]]:
        """The other series ``rule`` reads when evaluated on ``key``, how many of its own bars may wait, and the
        (exchange, symbol) pairs whose tickers it reads (its series' and the others')."""
        cached = self._refs_cache.get((rule.name, key))
        if cached is None:
            ex, sym, tf = key
            refs = {(ex, s or sym, t or tf) for t, s in _wheres(rule.condition) if t or s} - {key}
            own = max([_condition_bars(c, timeframe_ms(tf)) for c in _leaves(rule.condition)
                       if c.timeframe in (None, tf) and c.symbol in (None, sym)] or [1])
            pairs = sorted({k[:2] for k in (key, *refs)}) if _uses_tickers(rule.condition) else []
            cached = self._refs_cache[(rule.name, key)] = (tuple(sorted(refs)), max(1, self.keep - own),
                                                           tuple(pairs))
        return cached

    def _ready(self, refs: tuple[SeriesKey, ...], pairs: tuple[Pair, ...], close: int) -> bool:
        """Every other series read has delivered its bar closing by ``close``, and every ticker stream read has
        delivered a ticker after it (tickers of a pair come in order: none at or before ``close`` is still to come)."""
        for k in refs:
            if not self._reached(k, close):
                return False
        for p in pairs:
            t = self.tickers.get(p)
            if t is None or t.ts <= close:
                return False
        return True

    def _refresh_tickers(self, keys: Iterable[SeriesKey], close: int) -> None:
        """Set the ticker of every kept bar of ``keys`` closing by ``close`` to the last one at or before its close,
        from the ticker history (when the bar was stored, its ticker stream may not have been read that far)."""
        for key in keys:
            series = self.series.get(key)
            hist = self._ticker_hist.get(key[:2])
            if series is None or not hist:
                continue
            candles, tickers, tf = series.candles, series.tickers, series.tf_ms
            for i in range(len(candles) - 1 - series.provisional, -1, -1):
                end = candles[i].ts + tf
                if end <= series.tickers_final or end < hist[0].ts:
                    break  # final already / before the history kept (its stored ticker stays)
                if end <= close:
                    tickers[i] = self._ticker_as_of(key[:2], end)
            if self._ready((), (key[:2],), close):
                series.tickers_final = max(series.tickers_final, close)

    def _reached(self, key: SeriesKey, close: int) -> bool:
        """Series ``key`` has delivered its last bar closing at or before ``close``."""
        s = self.series.get(key)
        if s is None or len(s.candles) <= s.provisional:
            return False
        last = s.candles[-2 if s.provisional else -1]
        return last.ts + s.tf_ms >= bucket_start(close, s.tf_ms)

    @property
    def waiting(self) -> bool:
        """Some closed bar's evaluation waits for another series."""
        return bool(self._deferred)

    @property
    def deferred(self) -> int:
        """Closed bars whose evaluation (by some rule) waits for another series."""
        return sum(len(q) for q in self._deferred.values())

    def deferral_limit(self, rule: r.Rule, key: SeriesKey) -> int:
        """Bars of ``key`` that may wait for ``rule``: beyond it the oldest is evaluated (it would leave the kept
        history the rule reads)."""
        return self._refs(rule, key)[1]

    def flush_deferred(self, waited_since: int | None = None) -> list[Fire]:
        """Evaluate waiting bars now with what the other series have: all (``waited_since`` None: the end of a drain
        or a backtest), or those that started waiting at or before ``waited_since`` (engine clock, ms)."""
        if self._stale:
            self.rewarm()
        return self._run_deferred(force=True, before=waited_since)

    def _run_deferred(self, force: bool = False, before: int | None = None) -> list[Fire]:
        out: list[Fire] = []
        for qkey, queue in list(self._deferred.items()):
            name, key = qkey
            rule, series = self._by_name.get(name), self.series.get(key)
            if rule is None or series is None:
                del self._deferred[qkey]
                continue
            refs, limit, pairs = self._refs(rule, key)
            while queue:
                d = queue[0]
                due = (force and (before is None or (d.since is not None and d.since <= before))
                       or len(queue) > limit)
                if not due and not self._ready(refs, pairs, d.close):
                    break
                queue.popleft()
                if pairs:
                    self._refresh_tickers((key, *refs), d.close)
                view = series.as_of(d.close)  # this series as it was at that close (later bars hidden)
                shift = view.shift if isinstance(view, _Shifted) else 0
                candle = series.candles[-1 - shift] if shift < len(series.candles) else d.candle
                out.extend(self._evaluate(rule, view, candle, d.close, intrabar=False))
            if not queue:
                del self._deferred[qkey]
        return out

    def on_live_candle(self, candle: Candle, *, fire: bool = True) -> list[Fire]:
        """An in-progress candle: evaluated only for rules whose frequency allows intrabar alerts."""
        key = (candle.exchange, candle.symbol, candle.timeframe)
        rules = self.live_rules(candle.exchange, candle.symbol, candle.timeframe)
        if not rules:
            return []
        if self._stale:
            self.rewarm()
        series = self._series(key)
        candles, n = series.candles, series.provisional
        if len(candles) > n:
            have, prev = candles[-1 - n].ts, candle.prev_ts
            if have < (prev if prev is not None else candle.ts - series.tf_ms):
                return []  # the bar before it is not here yet (the candle stream lags this read): module docstring
        if not series.push_provisional(candle, self.tickers.get(key[:2])):
            return []
        out: list[Fire] = []
        try:
            for rule in rules:
                fired = self._evaluate_intrabar(rule, series, candle)
                if fire:
                    out.extend(fired)
        finally:
            series.pop_provisional()
        return out

    # ---- evaluation -------------------------------------------------------------------------------------------------

    def _status(self, rule: r.Rule, key: SeriesKey) -> tuple[str, RuleStatus]:
        fp = fingerprint(rule.name, *key)
        st = self.status.get(fp)
        if st is None:
            st = self.status[fp] = RuleStatus(rule.name, *key)
        return fp, st

    def _evaluate(self, rule: r.Rule, series: Series, candle: Candle, now: int, intrabar: bool) -> list[Fire]:
        fp, st = self._status(rule, series.key)
        return self._judge(rule, fp, st, series, candle, now)

    def _judge(self, rule: r.Rule, fp: str, st: RuleStatus, series: Any, candle: Candle, now: int) -> list[Fire]:
        """A closed bar's evaluation by ``rule``: updates ``st`` and returns its fires."""
        result = self.condition(rule.condition, rule, series, candle, now)
        st.last_eval_ms = now
        st.last_value = result.value
        out: list[Fire] = []
        if not result.ok:
            if st.state == "firing" and st.fired_in_run and rule.notify_on_resolve:
                out.append(self._fire(rule, fp, series, candle, now, result, "resolved"))
            st.state, st.since_ms, st.fired_in_run = "inactive", None, False
            return out
        if st.since_ms is None:
            st.since_ms = now
        if now - st.since_ms < rule.for_ms:
            st.state = "pending"
            return out
        st.state = "firing"
        if not self._allowed(rule, now):
            return out
        st.fired_in_run = True
        if rule.frequency == "every_time" and self.is_tick_level(rule, series.key[0], series.key[1]):
            return out  # it fired on the trades / tickers themselves; the close only keeps the state
        out.append(self._fire(rule, fp, series, candle, now, result, "firing"))
        return out

    def _evaluate_intrabar(self, rule: r.Rule, series: Series, candle: Candle) -> list[Fire]:
        """No state change: the bar is not final. ``for:`` needs a run already firing on closed bars."""
        now = candle.ts + series.tf_ms
        if not self._allowed(rule, now):
            return []
        fp, st = self._status(rule, series.key)
        if rule.for_ms and st.state != "firing":
            return []
        result = self.condition(rule.condition, rule, series, candle, now)
        if not result.ok:
            return []
        # once_per_bar: the same id as the close evaluation of this bar (one alert per bar);
        # every_time: one per change of the in-progress bar.
        extra = "" if rule.frequency == "once_per_bar" else f"live:{candle.trades}:{candle.last_trade_id}"
        return [self._fire(rule, fp, series, candle, now, result, "firing", extra)]

    def _allowed(self, rule: r.Rule, now: int) -> bool:
        """Not expired (exchange time ``now``) and not snoozed (wall clock; exchange time without a clock)."""
        expires, snooze = rule.expires_ms(), rule.snooze_ms()
        if expires is not None and now > expires:
            return False
        if snooze is None:
            return True
        return (now if self.clock is None else self.clock()) >= snooze

    def _evaluate_tick(self, rule: r.Rule, view: _Tick, ts: int, price: Decimal | None, extra: str) -> list[Fire]:
        """One trade or ticker for a tick-level rule: no state change (bars decide firing/resolved and ``for:``)."""
        series = view.series
        bar = bucket_start(ts, series.tf_ms)
        fp, st = self._status(rule, series.key)
        if rule.frequency == "once_per_bar" and st.tick_bar == bar:
            return []
        if rule.for_ms and st.state != "firing":
            return []
        if not self._allowed(rule, ts):
            return []
        result = self.condition(rule.condition, rule, view, None, ts)
        if not result.ok:
            return []
        if rule.frequency == "once_per_bar":
            st.tick_bar = bar
            extra = ""  # the id of this bar's close evaluation: one alert per bar
        ex, sym, tf = series.key
        value = result.value
        fields = {
            "rule": rule.name, "exchange": ex, "symbol": sym, "timeframe": tf, "price": price,
            "value": _fmt(value), "open": "n/a", "high": "n/a", "low": "n/a", "close": price, "volume": "n/a",
            "buy_volume": "n/a", "sell_volume": "n/a", "delta": "n/a", "cvd": series.value(r.CVD(anchor="1d")),
            "ts": ts, "time": datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "condition": describe(rule.condition), "severity": rule.severity, "state": "firing",
        }
        alert = Alert(
            id=alert_id(rule.name, ex, sym, tf, bar, "firing", extra), rule=rule.name, exchange=ex, symbol=sym,
            timeframe=tf, ts=ts, fired_at=ts, price=price,
            value=Decimal(repr(value)) if isinstance(value, float) else value,
            condition=fields["condition"], message=rule.message.format(**fields), severity=rule.severity,
            labels=dict(rule.labels), channels=list(rule.channels), state="firing",
        )
        return [Fire(alert, fp, rule.cooldown_ms, ts)]

    def _fire(self, rule: r.Rule, fp: str, series: Series, candle: Candle, now: int, result: _Eval, state: str,
              extra: str = "") -> Fire:
        ex, sym, tf = series.key
        condition = _describe_cached(rule.condition)
        need = _template_fields(rule.message)
        fields = {
            "rule": rule.name, "exchange": ex, "symbol": sym, "timeframe": tf, "price": candle.close,
            "value": _fmt(result.value), "open": candle.open, "high": candle.high, "low": candle.low,
            "close": candle.close, "volume": candle.volume, "buy_volume": candle.buy_volume,
            "sell_volume": candle.sell_volume, "ts": candle.ts, "condition": condition, "severity": rule.severity,
            "state": state,
        }
        # what costs something only when the template names it
        if "delta" in need:
            fields["delta"] = candle.delta
        if "cvd" in need:
            fields["cvd"] = series.value(_CVD_1D)
        if "time" in need:
            fields["time"] = datetime.fromtimestamp(now / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        value = result.value
        if isinstance(value, float):
            value = Decimal(repr(value))
        kwargs = dict(
            id=alert_id(rule.name, ex, sym, tf, candle.ts, state, extra), rule=rule.name, exchange=ex, symbol=sym,
            timeframe=tf, ts=candle.ts, fired_at=now, price=candle.close, value=value, condition=condition,
            message=rule.message.format(**fields), severity=rule.severity, labels=dict(rule.labels),
            channels=list(rule.channels), state=state,
        )
        # every field already has its model type (validated rule, candle, str/int/Decimal): no second validation
        alert = (Alert.trusted(**kwargs) if (value is None or type(value) is Decimal)
                 and type(candle.close) is Decimal and type(candle.ts) is int and type(now) is int
                 else Alert(**kwargs))
        cooldown = 0 if state == "resolved" else (FOREVER if rule.frequency == "once" else rule.cooldown_ms)
        return Fire(alert, fp, cooldown, now)

    def mark_fired(self, fp: str, now: int) -> None:
        """Record that the app actually published for ``fp`` (for the API's "last fired")."""
        st = self.status.get(fp)
        if st is not None:
            st.last_fired_ms = now

    def _where(self, cond: r._Where, rule: r.Rule, series: Any, now: int | None) -> Any:
        if cond.timeframe is None and cond.symbol is None:
            return series
        ex, sym, tf = series.key
        other = self.series.get((ex, cond.symbol or sym, cond.timeframe or tf))
        if other is None or now is None:
            return other
        return other.as_of(now)

    def condition(self, cond: Any, rule: r.Rule, series: Any, candle: Candle | None, now: int | None = None) -> _Eval:
        """Evaluate one condition on the last bar of ``series`` (or of the series the condition names, as of ``now``:
        exchange time of the evaluation)."""
        if isinstance(cond, r.All):
            results = [self.condition(c, rule, series, candle, now) for c in cond.all]
            return _Eval(all(x.ok for x in results), results[0].value)
        if isinstance(cond, r.AnyOf):
            results = [self.condition(c, rule, series, candle, now) for c in cond.any]
            hit = next((x for x in results if x.ok), results[0])
            return _Eval(hit.ok, hit.value)
        s = self._where(cond, rule, series, now)
        if s is None:
            return _Eval(False)
        if isinstance(cond, r.Compare):
            return _compare(s, cond)
        if isinstance(cond, r.Channel):
            return _channel(s, cond)
        if isinstance(cond, r.Moving):
            return _moving(s, cond)
        if isinstance(cond, r.VolumeSpike):
            return _spike(s, cond)
        raise TypeError(f"unknown condition {cond!r}")

    def status_rows(self) -> dict[str, dict[str, Any]]:
        return {fp: st.as_dict() for fp, st in self.status.items()}


def _compare(s: Series, c: r.Compare) -> _Eval:
    a, b = s.value(c.left), s.value(c.right)
    if a is None or b is None:
        return _Eval(False, a)
    if c.op == "greater_than":
        return _Eval(a > b, a)
    if c.op == "less_than":
        return _Eval(a < b, a)
    pa, pb = s.value(c.left, 1), s.value(c.right, 1)
    if pa is None or pb is None:
        return _Eval(False, a)
    up = pa <= pb and a > b
    down = pa >= pb and a < b
    return _Eval(up if c.op == "crosses_up" else down if c.op == "crosses_down" else up or down, a)


def _inside(s: Series, c: r.Channel, offset: int) -> bool | None:
    x, lo, hi = s.value(c.left, offset), s.value(c.lower, offset), s.value(c.upper, offset)
    if x is None or lo is None or hi is None:
        return None
    return lo <= x <= hi


def _channel(s: Series, c: r.Channel) -> _Eval:
    value = s.value(c.left)
    now = _inside(s, c, 0)
    if now is None:
        return _Eval(False, value)
    if c.op == "inside_channel":
        return _Eval(now, value)
    if c.op == "outside_channel":
        return _Eval(not now, value)
    before = _inside(s, c, 1)
    if before is None:
        return _Eval(False, value)
    return _Eval((not before and now) if c.op == "entering_channel" else (before and not now), value)


def _moving(s: Any, c: r.Moving) -> _Eval:
    back: int | None = c.bars
    if c.window_ms is not None:  # the last bar that started at least ``window`` before this one
        back = s.offset_at(_last_ts(s) - c.window_ms) if s.value("close") is not None else None
        if back is None:
            return _Eval(False, s.value(c.left))
    a, b = s.value(c.left), s.value(c.left, back)
    if a is None or b is None:
        return _Eval(False, a)
    change = _sub(a, b)
    if c.op.endswith("_pct"):
        if not b:
            return _Eval(False, a)
        change = change / b * (100.0 if isinstance(change, float) else _HUNDRED)
        threshold = _scale(c.percent, change)
    else:
        threshold = _scale(c.amount, change)
    return _Eval(change >= threshold if c.op.startswith("moving_up") else -change >= threshold, a)


def _spike(s: Series, c: r.VolumeSpike) -> _Eval:
    volume = s.value("volume")
    mean = s.value(r.VolumeSMA(period=c.period), 1)
    if volume is None or mean is None:
        return _Eval(False, volume)
    return _Eval(volume > float(c.factor) * mean, volume)


def _last_ts(s: Any) -> int:
    series = s.series if isinstance(s, _Shifted) else s
    shift = s.shift if isinstance(s, _Shifted) else 0
    return series.candles[-1 - shift].ts


def _tick_level(cond: Any) -> bool:
    """Conditions that are defined on a single trade/ticker: comparisons and channels (moves and spikes need bars)."""
    if isinstance(cond, r.All):
        return all(_tick_level(c) for c in cond.all)
    if isinstance(cond, r.AnyOf):
        return all(_tick_level(c) for c in cond.any)
    if cond.timeframe is not None or cond.symbol is not None:
        return True  # read from that series' closed bars
    if not isinstance(cond, (r.Compare, r.Channel)):
        return False
    return all(isinstance(o, (Decimal, r._Indicator)) or o in ("price", *r.TICKER_FIELDS) for o in _operands(cond))


def _reads_price(cond: Any) -> bool:
    return any(isinstance(o, str) and o == "price" for o in _operands(cond, own_only=True))


def _leaves(cond: Any) -> list[Any]:
    if isinstance(cond, r.All):
        return [x for c in cond.all for x in _leaves(c)]
    if isinstance(cond, r.AnyOf):
        return [x for c in cond.any for x in _leaves(c)]
    return [cond]


#: Indicator warm-up, in bars, before its value no longer depends on where the series started (to ~e^-6 or better):
#: moving averages need their period; EMA 3× it; Wilder smoothing (RSI, ATR; alpha 1/n, slower than EMA's 2/(n+1))
#: 10× so RSI converges; MACD the slow EMA's warm-up, then the signal's on top of it.
def warmup_bars(spec: r._Indicator, tf_ms: int) -> int:
    """Closed candles an indicator needs before its values are final (independent of the series' start)."""
    if isinstance(spec, r.EMA):
        return 3 * spec.period
    if isinstance(spec, (r.RSI, r.ATR)):
        return 10 * spec.period + 1
    if isinstance(spec, r.MACD):
        return 3 * (spec.slow + spec.signal)
    if isinstance(spec, (r.SMA, r.BBands, r.VolumeSMA)):
        return spec.period
    if isinstance(spec, r.CVD):
        return spec.bars if spec.bars is not None else -(-timeframe_ms(spec.anchor) // tf_ms)
    if isinstance(spec, r.VWAP):
        return -(-timeframe_ms(spec.anchor) // tf_ms)
    return 1


def _condition_bars(cond: Any, tf_ms: int) -> int:
    """Bars one leaf condition reads back: its operands' warm-up plus what the condition itself looks back."""
    back = 1  # crossings, entering/exiting compare with the bar before
    if isinstance(cond, r.Moving):
        back = cond.bars if cond.window_ms is None else -(-cond.window_ms // tf_ms) + 1
    elif isinstance(cond, r.VolumeSpike):
        return cond.period + 1
    return max([back + 1] + [warmup_bars(o, tf_ms) + back for o in _operands(cond) if isinstance(o, r._Indicator)])


def _wheres(cond: Any) -> list[tuple[str | None, str | None]]:
    if isinstance(cond, r.All):
        return [w for c in cond.all for w in _wheres(c)]
    if isinstance(cond, r.AnyOf):
        return [w for c in cond.any for w in _wheres(c)]
    return [(cond.timeframe, cond.symbol)]


def _operands(cond: Any, own_only: bool = False) -> list[Any]:
    if isinstance(cond, r.All):
        return [o for c in cond.all for o in _operands(c, own_only)]
    if isinstance(cond, r.AnyOf):
        return [o for c in cond.any for o in _operands(c, own_only)]
    if own_only and (cond.timeframe is not None or cond.symbol is not None):
        return []
    return [getattr(cond, name) for name in ("left", "right", "lower", "upper") if hasattr(cond, name)]


def _uses_tickers(cond: Any) -> bool:
    return any(isinstance(o, str) and o in r.TICKER_FIELDS for o in _operands(cond))


def describe(cond: Any) -> str:
    """Human-readable condition, for messages and the API."""
    if isinstance(cond, r.All):
        return "(" + " and ".join(describe(c) for c in cond.all) + ")"
    if isinstance(cond, r.AnyOf):
        return "(" + " or ".join(describe(c) for c in cond.any) + ")"
    where = "".join(f" [{p}]" for p in (cond.symbol, cond.timeframe) if p)
    if isinstance(cond, r.Compare):
        text = f"{r.operand_label(cond.left)} {cond.op} {r.operand_label(cond.right)}"
    elif isinstance(cond, r.Channel):
        text = f"{r.operand_label(cond.left)} {cond.op} [{r.operand_label(cond.lower)}, {r.operand_label(cond.upper)}]"
    elif isinstance(cond, r.Moving):
        by = f"{cond.percent}%" if cond.op.endswith("_pct") else str(cond.amount)
        within = f"{cond.window_ms // 1000}s" if cond.window_ms is not None else f"{cond.bars} bars"
        text = f"{r.operand_label(cond.left)} {cond.op.removesuffix('_pct')} {by} within {within}"
    else:
        text = f"volume > {cond.factor} x volume_sma({cond.period})"
    return text + where


_CVD_1D = r.CVD(anchor="1d")  # the message field ``cvd``
_TEMPLATE_ALL = frozenset(("delta", "cvd", "time"))
_described: dict[int, tuple[Any, str]] = {}


def _describe_cached(cond: Any) -> str:
    """``describe(cond)``, once per condition object (rules are immutable; a reload brings new objects)."""
    hit = _described.get(id(cond))
    if hit is not None and hit[0] is cond:
        return hit[1]
    if len(_described) > 4096:
        _described.clear()
    text = describe(cond)
    _described[id(cond)] = (cond, text)
    return text


@functools.lru_cache(maxsize=4096)
def _template_fields(message: str) -> frozenset[str]:
    """The field names a message template uses (``{cvd}``, ``{time:...}``, ``{price.x}`` -> price)."""
    try:
        names = {name.split(".", 1)[0].split("[", 1)[0]
                 for _, name, _, _ in string.Formatter().parse(message) if name}
    except ValueError:  # not a valid template: every field, and format() reports it as before
        return _TEMPLATE_ALL
    return frozenset(names)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)
