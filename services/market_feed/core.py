"""Pure logic of market_feed: batching, dedup, watermarks and pacing. No asyncio, no Redis, no clock.

``FeedCore`` turns an exchange-ordered sequence of ``(symbol, Trade)`` into the messages of the trades contract
(``docs/architecture.md``):

- a ``TradeBatch`` per symbol holds trades within ``window_ms`` of its first trade, at most ``batch_size`` of them;
- a ``Watermark`` for every symbol at once (symbol "": the publisher writes one per partition) each time exchange
  time passes a multiple of ``watermark_every_ms`` (it carries ``T - 1`` when the trade at ``T`` arrives: every trade
  at or before ``T - 1`` has been emitted, ones at ``T`` may still follow), and a final one from ``finish``;
- optionally a tick event per symbol every ``ticker_every_ms`` of exchange time (the simulated market's tickers);
- trades whose id is not above the last id emitted for the symbol are dropped (``IdDedup``), which is what makes a
  restarted feed or a resent frame harmless.

Events come out in the order they must be published: a symbol's batch always precedes the watermark that covers it.
"""

from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterable
from itertools import islice
from dataclasses import dataclass, field
from typing import Any

from shared.feed_codec import TextColumns
from shared.schemas import Trade, TradeBatch, TradeText, Watermark


@dataclass(slots=True)
class TickEvent:
    """Time to publish a ticker for ``symbol`` at exchange time ``ts`` (simulated market)."""

    symbol: str
    ts: int


Event = TradeBatch | Watermark | TickEvent


class IdDedup:
    """Drops trade ids already seen for one stream, in bounded memory.

    Integer ids of an exchange increase, so the last accepted id is the whole state: anything at or below it is a
    duplicate. Non-integer ids (some exchanges use UUIDs) are remembered in an LRU of ``window`` entries. Trades
    without an id cannot be deduplicated and always pass.
    """

    __slots__ = ("last_id", "_recent", "window", "dropped")

    def __init__(self, last_id: int | None = None, window: int = 100_000) -> None:
        self.last_id = last_id
        self._recent: OrderedDict[str, None] = OrderedDict()
        self.window = window
        self.dropped = 0

    def is_new(self, trade_id: int | str | None) -> bool:
        """Whether ``accept`` would take this id (no change of state)."""
        if trade_id is None:
            return True
        if isinstance(trade_id, int):
            return self.last_id is None or trade_id > self.last_id
        return trade_id not in self._recent

    def accept(self, trade_id: int | str | None) -> bool:
        if trade_id is None:
            return True
        if isinstance(trade_id, int):
            if self.last_id is not None and trade_id <= self.last_id:
                self.dropped += 1
                return False
            self.last_id = trade_id
            return True
        if trade_id in self._recent:
            self.dropped += 1
            return False
        self._recent[trade_id] = None
        if len(self._recent) > self.window:
            self._recent.popitem(last=False)
        return True

    def filter(self, trades: Iterable[Trade]) -> list[Trade]:
        return [t for t in trades if self.accept(t.id)]


@dataclass(slots=True)
class _SymbolState:
    dedup: IdDedup
    batch: list[Any] = field(default_factory=list)  # Trade (live), TradeText (replay): never mixed
    last_ts: int | None = None


class FeedCore:
    """Batching, dedup, watermarks and tick events for the trades of several symbols of one exchange."""

    def __init__(self, exchange: str, symbols: Iterable[str], *, batch_size: int = 200, window_ms: int = 50,
                 watermark_every_ms: int = 1_000, ticker_every_ms: int | None = None,
                 last_ids: dict[str, int | None] | None = None, dedup_window: int = 100_000) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.exchange = exchange
        self.batch_size = batch_size
        self.window_ms = window_ms
        self.watermark_every_ms = watermark_every_ms
        self.ticker_every_ms = ticker_every_ms
        last_ids = last_ids or {}
        self.symbols: dict[str, _SymbolState] = {
            s: _SymbolState(IdDedup(last_ids.get(s), dedup_window)) for s in symbols}
        self.clock: int | None = None  # latest exchange time seen, all symbols
        self._next_watermark: int | None = None
        self._next_tick: int | None = None
        self.accepted = 0

    @property
    def dropped(self) -> int:
        return sum(s.dedup.dropped for s in self.symbols.values())

    def is_new(self, symbol: str, trade: Trade | TradeText) -> bool:
        """Whether ``push`` would publish this trade rather than drop it as already published (no change of state):
        a resumed replay paces from its first new trade, not from the file's first."""
        state = self.symbols.get(symbol)
        return state is not None and state.dedup.is_new(trade.id)

    def push(self, symbol: str, trade: Trade | TradeText) -> list[Event]:
        """Add the next trade (exchange order); returns the events now ready, in publish order."""
        state = self.symbols.get(symbol)
        if state is None:
            raise KeyError(f"unknown symbol {symbol!r} for {self.exchange}")
        tid, ts = trade[0], trade[1]
        dedup = state.dedup
        if type(tid) is int and dedup.last_id is not None and tid > dedup.last_id:  # the usual: a later id
            dedup.last_id = tid
        elif not dedup.accept(tid):
            return []  # a duplicate neither publishes nor moves time (a restarted feed re-reads what it sent)
        clock, mark, tick = self.clock, self._next_watermark, self._next_tick
        if clock is not None and mark is not None and clock <= ts <= mark and (tick is None or ts < tick):
            self.clock = ts  # nothing due (``advance`` would say so after the same comparisons)
            out: list[Event] = []
        else:
            out = self.advance(ts)
        batch = state.batch
        if batch and (len(batch) >= self.batch_size or ts - batch[0][1] > self.window_ms):
            out.append(self._take(symbol, state))
        state.batch.append(trade)
        state.last_ts = ts
        self.accepted += 1
        return out

    def push_block(self, symbol: str, block: TextColumns) -> list[Event]:
        """``push`` of every trade of ``block`` in turn, the same events out, found by bisecting its timestamps
        (watermark and tick times, batch windows) and cutting its columns into ``TextColumns`` batches: no Python
        step per trade. A block whose ids are not increasing integers, or whose times go back, takes ``push``."""
        state = self.symbols.get(symbol)
        if state is None:
            raise KeyError(f"unknown symbol {symbol!r} for {self.exchange}")
        ids, tss, n = block.ids, block.tss, len(block)
        dedup = state.dedup
        if not n or not _in_order(ids, tss) or (self.clock is not None and tss[0] < self.clock):
            return [event for trade in block for event in self.push(symbol, trade)]
        first = 0 if dedup.last_id is None else bisect_right(ids, dedup.last_id)  # ids published already: dropped
        dedup.dropped += first
        if first == n:
            return []
        out = self.advance(tss[first])  # the first trade as ``push`` takes it (it may start the clock)
        head, start = state.batch, first  # the batch pending: ``head`` (trades pushed before) + block[start:i]
        state.batch = []
        if head and (len(head) >= self.batch_size or tss[first] - head[0][1] > self.window_ms):
            out.append(TradeBatch(self.exchange, symbol, head))
            head = []
        i = first + 1
        while i < n:
            window_end = bisect_right(tss, (head[0][1] if head else tss[start]) + self.window_ms, i, n)
            cut = min(start + self.batch_size - len(head), window_end)
            next_mark, next_tick = self._next_watermark, self._next_tick
            mark = bisect_right(tss, next_mark, i, n) if next_mark is not None else n  # first ts - 1 >= next_mark
            tick = bisect_left(tss, next_tick, i, n) if next_tick is not None and self.ticker_every_ms else n
            p = min(cut, mark, tick)  # the next trade at which something happens: ``advance``'s events, then a cut
            if p >= n:
                break
            ts = tss[p]
            if p == tick and next_tick is not None and self.ticker_every_ms:
                out.extend(TickEvent(s, next_tick) for s in self.symbols)
                self._next_tick = ts - ts % self.ticker_every_ms + self.ticker_every_ms
            if p == mark:
                for s, st in self.symbols.items():  # ``flush``, in the symbols' order
                    if s == symbol:
                        out.append(self._block_batch(symbol, head, block, start, p))
                        head, start = [], p
                    elif st.batch:
                        out.append(self._take(s, st))
                out.append(Watermark(self.exchange, "", ts - 1))
                self._next_watermark = ts - ts % self.watermark_every_ms + self.watermark_every_ms
            elif p == cut:
                out.append(self._block_batch(symbol, head, block, start, p))
                head, start = [], p
            i = p + 1
        state.batch = head + list(block.slice(start, n))
        self.clock = state.last_ts = tss[n - 1]
        dedup.last_id = ids[n - 1]
        self.accepted += n - first
        return out

    def _block_batch(self, symbol: str, head: list[Any], block: TextColumns, start: int, end: int) -> TradeBatch:
        """The batch of ``head`` (trades pushed before) and ``block[start:end]``."""
        part = block.slice(start, end)
        if head:
            ids, tss, prices, amounts, sides = (list(col) for col in zip(*head))
            part = TextColumns(ids + part.ids, tss + part.tss, prices + part.prices, amounts + part.amounts,
                               [1 if b else 0 for b in sides] + part.sides)
        return TradeBatch(self.exchange, symbol, part)

    def advance(self, ts: int) -> list[Event]:
        """Exchange time moved to ``ts`` (a trade at ``ts`` is next): watermarks/ticks that are due, in order."""
        out: list[Event] = []
        if self.clock is None:
            self.clock = ts
            self._next_watermark = ts - ts % self.watermark_every_ms + self.watermark_every_ms
            if self.ticker_every_ms:
                self._next_tick = ts - ts % self.ticker_every_ms + self.ticker_every_ms
            return out
        if ts < self.clock:  # late trade: time does not go back
            return out
        self.clock = ts
        if self._next_tick is not None and self.ticker_every_ms and ts >= self._next_tick:
            for symbol in self.symbols:
                out.append(TickEvent(symbol, self._next_tick))
            self._next_tick = ts - ts % self.ticker_every_ms + self.ticker_every_ms
        if self._next_watermark is not None and ts - 1 >= self._next_watermark:
            out.extend(self.flush())
            out.append(Watermark(self.exchange, "", ts - 1))
            self._next_watermark = ts - ts % self.watermark_every_ms + self.watermark_every_ms
        return out

    def flush(self) -> list[Event]:
        """Every pending batch (e.g. before waiting for a paced trade, or at the end)."""
        return [self._take(s, st) for s, st in self.symbols.items() if st.batch]

    def finish(self, end_ts: int | None = None) -> list[Event]:
        """The source ended: pending batches, then a final watermark (every symbol) at ``end_ts`` (default: clock)."""
        out = self.flush()
        ts = end_ts if end_ts is not None else (self.clock if self.clock is not None else 0)
        out.append(Watermark(self.exchange, "", ts, final=True))
        return out

    def _take(self, symbol: str, state: _SymbolState) -> TradeBatch:
        batch = TradeBatch(self.exchange, symbol, state.batch)
        state.batch = []
        return batch


def _in_order(ids: list[Any], tss: list[int]) -> bool:
    """Integer ids strictly increasing and times never going back (what ``push_block``'s bisections assume)."""
    return (set(map(type, ids)) == {int} and all(map(operator.lt, ids, islice(ids, 1, None)))
            and all(map(operator.le, tss, islice(tss, 1, None))))


def pace_delay(ts: int, first_ts: int, wall_start: float, now: float, speed: float) -> float:
    """Seconds to wait before emitting a trade at exchange time ``ts`` to play at real time × ``speed``.

    ``first_ts`` is the exchange time that was emitted at wall time ``wall_start``. ``speed <= 0`` means no waiting.
    """
    if speed <= 0:
        return 0.0
    return max(0.0, wall_start + (ts - first_ts) / 1000.0 / speed - now)
