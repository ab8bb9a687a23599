"""The engine: candles, tickers and trades in, ``Fire`` records (alerts to publish) out. No Redis, no clock, no
asyncio: time is exchange time, passed in with the data.

A closed candle is evaluated "at" its close (``ts + timeframe``), so a replay of a recording behaves exactly like the
live market did. The app gates each ``Fire`` through its cooldown and the alert-id record (atomically in Redis) and
publishes it.

- Closed candles (``on_candle``, ``on_batch``): every rule of the series, through ``firing.on_closed_bar``. A rule
  reading another series or tickers may wait for them (``waiting``).
- In-progress candles (``on_live_candle``): only intrabar rules, on a window holding the closed bar just before the
  in-progress one, evaluated at ``live_time`` (the candle's ``as_of``: the exchange time of its newest trade, kept
  inside its bar), which is also the alert's ``fired_at``. candle_builder publishes a bar's in-progress candle after closing every earlier bar and names the
  last one in ``prev_ts``; a missing previous bar means the engine has not read it yet (the live stream ran ahead of
  a backlogged candle stream in one read), and evaluated then, ``offset 1`` would be an older bar and every indicator
  window would have a hole: a crossing the closed bars never make. Such a candle is skipped (the closed bars, and
  newer in-progress candles, follow). ``prev_ts`` is what lets a bar after an interval without trades
  (``flat_candles: false``) be evaluated; a candle without it must follow its predecessor directly.
- Trades and tickers (``on_trades``, ``on_ticker``): an ``every_time``/``once_per_bar`` rule whose condition reads
  ``price`` runs on every trade, one reading ticker fields on every ticker (``window.TickView``). The alert carries
  the trade's (ticker's) time and price; ``once_per_bar`` shares its id with the bar's close, so a bar alerts once.
- Another series (a condition's ``timeframe``/``symbol``) and the ticker of a closed bar are read as of the bar's
  close: the last candle of that series closed by then, the last ticker at or before it — never later data.
- Book and futures updates (``on_feed``: BookFigures of a BookSnapshot, FundingRate, OpenInterest, Liquidation): a rule reading book
  or futures operands runs on each update of the kinds it reads, and only there; each update is an evaluation with
  state, as a closed bar is (``for:`` in exchange time, resolve). ``every_time`` alerts on each update that holds;
  the other frequencies at most once per bar of the rule's timeframe (``once``: once ever, by its cooldown). Its
  candle operands read the last closed bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from services.alert_engine.core import firing
from services.alert_engine.core.alerts import Fire
from services.alert_engine.core.feeds import BookFigures
from services.alert_engine.core.firing import RuleStatuses
from services.alert_engine.core.market import Market
from services.alert_engine.core.routes import Binding, Routes
from services.alert_engine.core.waiting import Waits
from services.alert_engine.core.window import CandleWindow, FeedView, SeriesKey, TickView, WindowAsOf
from shared.book_messages import BookSnapshot
from shared.derivs_messages import FundingRate, Liquidation, OpenInterest
from shared.rules import RuleSet
from shared.schemas import Candle, Ticker, Trade
from shared.timeframes import bucket_start, timeframe_ms

FeedUpdate = BookFigures | BookSnapshot | FundingRate | OpenInterest | Liquidation


def live_time(candle: Candle) -> int:
    """The exchange time an in-progress candle is evaluated at among closed candles (each at its close): its
    ``as_of`` (the newest trade in it) kept inside its bar, so it comes after the close of the bar before and before
    its own bar's close; the bar's last millisecond when the writer did not say (``as_of`` None)."""
    end = candle.ts + timeframe_ms(candle.timeframe) - 1
    as_of = candle.as_of
    return end if as_of is None else min(max(as_of, candle.ts), end)


class AlertEngine:
    """Evaluates a rule set on candles, tickers and trades. Feed it in exchange order per series."""

    def __init__(self, ruleset: RuleSet | None = None, *, keep: int = 600,
                 clock: Callable[[], int] | None = None, owns: Callable[[str, str], bool] | None = None) -> None:
        """``keep``: closed candles kept per series, at least; ``clock``: wall time in ms, for ``snooze_until``
        (None: exchange time, as in a deterministic backtest); ``owns``: the pairs whose rules this engine runs
        (None: all; an engine of one partition reads other pairs' series only for its rules)."""
        self.keep = keep
        self.clock = clock
        self.owns = owns
        self.market = Market(keep)
        self.windows = self.market.windows
        self.status = RuleStatuses()  # fingerprint -> its rule status
        self.waits = Waits(self.market)
        self.routes = Routes([], keep, self.windows, owns)
        self._out: list[Fire] = []  # fires of the evaluation in progress
        self.evaluations = 0  # rule evaluations on closed bars not yet taken (``take_evaluations``)
        self.set_rules(ruleset or RuleSet())

    @property
    def rules(self) -> list[Any]:
        return self.routes.rules

    def set_rules(self, ruleset: RuleSet) -> None:
        """Swap the rule set; windows (and their indicators) are kept, the state of removed rules dropped."""
        self.routes = routes = Routes(ruleset.enabled, self.keep, self.windows, self.owns)
        self.market.set_feed_horizon(routes.feed_horizon_ms)
        self.status = RuleStatuses({fp: s for fp, s in self.status.items() if s.rule in routes.by_name})

        def rebind(name: str, key: SeriesKey) -> Binding | None:
            rule = routes.by_name.get(name)
            return None if rule is None else routes.binding(rule, key)

        self.waits.keep_rules(rebind)

    def reset(self) -> None:
        """Forget everything read (windows, tickers, rule status, bars waiting), keeping the rules and each series'
        window size: the state of a freshly started engine, to be warmed up again from what was committed."""
        sizes = {key: w.keep for key, w in self.windows.items()}
        self.market = Market(self.keep)
        self.windows = self.market.windows
        self.status = RuleStatuses()
        self.waits = Waits(self.market)
        self.routes = Routes(self.routes.rules, self.keep, self.windows, self.owns)
        for key, bars in sizes.items():
            self.reserve(key, bars)

    def reserve(self, key: SeriesKey, bars: int) -> None:
        """Keep at least ``bars`` closed candles of series ``key`` (a rule's look-back beyond ``keep``)."""
        w = self.market.window(key)
        if bars > w.keep:
            w.resize(bars)

    # ---- input ------------------------------------------------------------------------------------------------------

    def on_batch(self, values: Iterable[Candle | Ticker], *, fire: bool = True) -> list[Fire]:
        """Candles and tickers read together, in exchange-time order: tickers by their time, closed candles by their
        close, in-progress candles by their ``as_of`` (``live_time``: before their own bar's close, after the
        previous one's); all candles closing at one time are stored before any is evaluated, so a condition on
        another series sees that series' bar of the same close."""
        timed: list[tuple[int, int, int, Candle | Ticker]] = []
        for n, v in enumerate(values):
            if isinstance(v, Ticker):
                timed.append((v.ts, 0, n, v))
            elif v.closed:
                timed.append((v.ts + timeframe_ms(v.timeframe), 1, n, v))
            else:
                timed.append((live_time(v), 2, n, v))
        timed.sort(key=lambda x: x[:3])
        out: list[Fire] = []
        i = 0
        while i < len(timed):
            t, kind, _, v = timed[i]
            if kind != 1:
                out += self.on_ticker(v, fire=fire) if isinstance(v, Ticker) else self.on_live_candle(v, fire=fire)
                i += 1
                continue
            group: list[Candle] = []
            while i < len(timed) and timed[i][0] == t and timed[i][1] == 1:
                group.append(timed[i][3])  # type: ignore[arg-type]
                i += 1
            pushed = [(c, w) for c in group if (w := self.market.push(c)) is not None]
            for c, w in pushed:
                fired = self._closed_bar(c, w)
                if fire:
                    out += fired
        return out

    def take_evaluations(self) -> int:
        """Rule evaluations on closed bars and book / futures updates since the last call (for the metrics)."""
        n, self.evaluations = self.evaluations, 0
        return n

    def on_candle(self, candle: Candle, *, fire: bool = True) -> list[Fire]:
        """A closed (or revised) candle. ``fire=False`` warms state up without producing alerts; so does a candle
        taken from the exchange's history (``candle.history``: seeded or backfilled, not a bar that just closed)."""
        if not candle.closed:
            return self.on_live_candle(candle, fire=fire)
        w = self.market.push(candle)
        if w is None:
            return []
        fired = self._closed_bar(candle, w)
        return fired if fire else []

    def on_live_candle(self, candle: Candle, *, fire: bool = True) -> list[Fire]:
        """An in-progress candle: evaluated only by rules whose frequency allows intrabar alerts."""
        key = (candle.exchange, candle.symbol, candle.timeframe)
        bindings = self.routes.live(key)
        if not bindings:
            return []
        self._rewarm_if_stale()
        w = self.market.window(key)
        last = w.last_closed()
        if last is not None and last.ts < (candle.prev_ts if candle.prev_ts is not None else candle.ts - w.tf_ms):
            return []  # the bar before it is not here yet (the candle stream lags this read): module docstring
        if not w.push_provisional(candle, self.market.tickers.get(key[:2])):
            return []
        now = live_time(candle)  # its exchange time: the alert's, the cooldown's and other series' "as of"
        # once_per_bar: the id of this bar's close evaluation (one alert per bar); every_time: one per change
        changed = f"live:{candle.trades}:{candle.last_trade_id}"
        out: list[Fire] = []
        try:
            for b in bindings:
                rule = b.rule
                if not firing.allowed(rule, now, self.clock):
                    continue
                if rule.for_ms and self.status.of(b).state != "firing":
                    continue  # for: only while its run is already firing on closed bars
                holds, value = b.evaluate(w, now)
                if holds:
                    out.append(b.maker.bar(candle, now, value, "firing", w,
                                           "" if rule.frequency == "once_per_bar" else changed))
        finally:
            w.pop_provisional()
        return out if fire else []

    def on_ticker(self, ticker: Ticker, *, fire: bool = True) -> list[Fire]:
        """A ticker: kept for candle rules (as of each bar's close) and evaluated by tick-level ticker rules."""
        market = self.market
        if not market.add_ticker(ticker):
            return []
        pair = (ticker.exchange, ticker.symbol)
        out = self._release_waits() if self.waits.queues else []  # bars that waited for a ticker past their close
        bindings = self.routes.tick_rules(*pair, "ticker")
        if bindings:
            self._rewarm_if_stale()  # tick-level rules read indicators of the last closed bar
            prev = market.prev_tickers.get(pair)
            price = market.last_prices.get(pair)
            for b in bindings:
                view = TickView(market.window(b.key), price, None, ticker, prev)
                out += self._tick(b, view, ticker.ts, ticker.last, f"ticker:{ticker.ts}")
        market.prev_tickers[pair] = ticker
        return out if fire else []

    def on_trades(self, exchange: str, symbol: str, trades: Iterable[Trade], *, fire: bool = True) -> list[Fire]:
        """Trades of (exchange, symbol) in exchange order: each is evaluated by the tick-level price rules."""
        market = self.market
        pair = (exchange, symbol)
        bindings = self.routes.tick_rules(exchange, symbol, "trade")
        if bindings:
            self._rewarm_if_stale()  # tick-level rules read indicators of the last closed bar
        prev = market.last_prices.get(pair)
        out: list[Fire] = []
        for tid, ts, price, _, _ in trades:
            for b in bindings:
                view = TickView(market.window(b.key), price, prev, market.tickers.get(pair),
                                market.prev_tickers.get(pair))
                out += self._tick(b, view, ts, price, f"trade:{tid}:{ts}")
            prev = price
        if prev is not None:
            market.last_prices[pair] = prev
        return out if fire else []

    def on_feed(self, update: FeedUpdate, *, fire: bool = True) -> list[Fire]:
        """A book snapshot (as ``BookFigures``; a ``BookSnapshot`` is converted) or futures reading of one pair:
        kept, and evaluated by the rules reading its kind."""
        if isinstance(update, BookSnapshot):
            update = BookFigures.of(update)
        feeds = self.market.pair_feeds((update.exchange, update.symbol))
        if isinstance(update, BookFigures):
            kind, added, extra = "book", feeds.add_book(update), f"book:{update.ts}:{update.update_id}"
        elif isinstance(update, FundingRate):
            kind, added, extra = "funding", feeds.add_funding(update), f"funding:{update.ts}"
        elif isinstance(update, OpenInterest):
            kind, added, extra = "open_interest", feeds.add_open_interest(update), f"oi:{update.ts}"
        else:
            kind, added = "liquidations", feeds.add_liquidation(update)
            extra = f"liq:{update.ts}:{update.side}:{update.price}:{update.amount}"
        if not added:
            return []
        bindings = self.routes.feed(update.exchange, update.symbol, kind)
        if not bindings:
            return []
        self._rewarm_if_stale()  # candle operands read the last closed bar's indicators
        self.evaluations += len(bindings)
        now, price = update.ts, feeds.price(kind)
        out: list[Fire] = []
        status_of = self.status.of
        for b in bindings:
            view = FeedView(self.market.window(b.key), feeds)
            rule, st = b.rule, status_of(b)
            holds, value = b.evaluate(view, now)
            if not holds and st.state == "inactive":
                st.last_eval_ms, st.last_value = now, value
                continue
            verdict = firing.on_closed_bar(rule, st, holds, value, now, self.clock, False)
            if verdict is None:
                continue
            bar = bucket_start(now, view.tf_ms)
            tag = extra
            if verdict == "firing" and rule.frequency != "every_time":
                if st.tick_bar == bar:
                    continue  # one alert per bar
                st.tick_bar, tag = bar, ""
            out.append(b.maker.tick(bar, now, price, value, view, tag, verdict))
        return out if fire else []

    # ---- backfilled history -----------------------------------------------------------------------------------------

    @property
    def stale(self) -> bool:
        """Some window holds backfilled candles not merged yet (``rewarm`` merges them)."""
        return bool(self.market.stale)

    def rewarm(self) -> list[SeriesKey]:
        """Merge backfilled candles into their windows (``Market.rewarm``); done before any evaluation anyway."""
        return self.market.rewarm()

    def merge(self, key: SeriesKey, candles: Iterable[Candle]) -> bool:
        """Merge closed candles of ``key`` read from its stream into its window (``Market.merge``)."""
        return self.market.merge(key, candles)

    def _rewarm_if_stale(self) -> None:
        if self.market.stale:
            self.market.rewarm()

    # ---- bars waiting for other series ------------------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Some closed bar's evaluation waits for another series."""
        return bool(self.waits.queues)

    @property
    def deferred(self) -> int:
        """Closed bars whose evaluation (by some rule) waits for another series."""
        return len(self.waits)

    def flush_deferred(self, waited_since: int | None = None) -> list[Fire]:
        """Evaluate waiting bars now with what the other series have: all (``waited_since`` None: the end of a drain
        or a backtest), or those that started waiting at or before ``waited_since`` (engine clock, ms)."""
        self._rewarm_if_stale()
        return self._release_waits(force=True, before=waited_since)

    def _release_waits(self, force: bool = False, before: int | None = None) -> list[Fire]:
        out: list[Fire] = []
        self.waits.release(lambda b, view, candle, close: self._judge(b, view, candle, close, out), force, before)
        return out

    # ---- evaluation -------------------------------------------------------------------------------------------------

    def _closed_bar(self, candle: Candle, w: CandleWindow) -> list[Fire]:
        if self.market.stale:
            self.market.rewarm()
        now = candle.ts + w.tf_ms
        out: list[Fire] = []
        waits, clock, on_closed_bar = self.waits, self.clock, firing.on_closed_bar
        bindings = self.routes.closed(w.key)
        self.evaluations += len(bindings)
        for b in bindings:
            if b.reads_others and waits.must_wait(b, now):
                waits.add(b, candle, now, None if clock is None else clock())
                continue
            holds, value = b.evaluate(w, now)  # (_judge, inlined: the hot loop)
            st = b.status or self.status.of(b)
            if not holds and st.state == "inactive":  # the usual bar: firing.on_closed_bar's first lines, and no more
                st.last_eval_ms, st.last_value = now, value
                continue
            verdict = on_closed_bar(b.rule, st, holds, value, now, clock, b.fires_at_ticks)
            if verdict is not None:
                out.append(b.maker.bar(candle, now, value, verdict, w))
        if waits.queues:  # bars of other series waiting for this one
            out += self._release_waits()
        return out

    def _judge(self, b: Binding, view: CandleWindow | WindowAsOf, candle: Candle, now: int, out: list[Fire]) -> None:
        """A closed bar's evaluation by one rule: its status updated, its alert (if any) appended to ``out``."""
        holds, value = b.evaluate(view, now)
        verdict = firing.on_closed_bar(b.rule, self.status.of(b), holds, value, now, self.clock, b.fires_at_ticks)
        if verdict is not None:
            out.append(b.maker.bar(candle, now, value, verdict, view))

    def _tick(self, b: Binding, view: TickView, ts: int, price: Any, extra: str) -> list[Fire]:
        """One trade or ticker for a tick-level rule: no state change (bars decide firing/resolved and ``for:``)."""
        rule, st = b.rule, b.status or self.status.of(b)
        bar = bucket_start(ts, view.tf_ms)
        if not firing.may_fire_at_tick(rule, st, bar, ts, self.clock):
            return []
        holds, value = b.evaluate(view, ts)
        if not holds:
            return []
        if rule.frequency == "once_per_bar":
            st.tick_bar = bar
            extra = ""  # the id of this bar's close evaluation: one alert per bar
        return [b.maker.tick(bar, ts, price, value, view.window, extra)]
