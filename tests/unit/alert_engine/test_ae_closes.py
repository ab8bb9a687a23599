"""``FastClose.closes``: what a batch's trades entries will do to a pair's replica, told before they are applied —
the alert engine evaluates and commits the bars it says they close before applying them (``_handle_ahead``). Checked
against applying them, on the real BTCUSDT trades cut into random entries, with late trades, jumps over bars and
stale marks mixed in: every "closes exactly the marked bars" must be what the replica then emits, every "closes
nothing" must emit nothing."""

from __future__ import annotations

import random
from decimal import Decimal

from services.alert_engine.fastclose import FastClose, Replica
from services.candle_builder.core import SeriesBuilder
from shared.bus import Entry
from shared.schemas import TradeBatch
from tests.conftest import shared_data
from tests.integration.test_candle_builder import read_trades

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
PAIR = ("binance", "BTC/USDT")
TFS = {"1s", "1m", "5m"}


def _rows(trades) -> list[tuple]:
    return [(t.id, t.ts, t.price, t.amount, t.is_buy) for t in trades]


def test_a_batch_said_to_close_the_marked_bars_closes_exactly_those_and_one_said_to_close_nothing_emits_nothing():
    trades = read_trades(shared_data(BTC))[:12_000]
    rng = random.Random(11)
    fast = FastClose(redis=None)
    builder = SeriesBuilder(sorted(TFS), base="1s", flat_candles=False, lateness_ms=60_000)
    fast.replicas[PAIR] = Replica(builder, (0, 0))
    n = 0  # entry ids

    def entry(rows: list[tuple]) -> Entry:
        nonlocal n
        n += 1
        return Entry("trades", b"%d-0" % n, TradeBatch(*PAIR, rows))

    def apply(entries: list[Entry]) -> list:
        out = []
        for e in entries:
            out += fast.apply(PAIR, e.id, e.value, TFS)
        return out

    verdicts = {True: 0, False: 0, None: 0}
    kinds = set()
    i = 0
    while i < len(trades) - 10:
        if rng.random() < 0.5 and builder.base is not None:  # up to the bar's last trade: the batch starts a bar
            j = i
            while j < len(trades) and trades[j].ts < builder.base.end:
                j += 1
            if j > i:
                apply([entry(_rows(trades[i:j]))])
                i = j
        mark, marked = fast.mark(PAIR), fast.next_close(PAIR, TFS)
        if rng.random() < 0.1:  # the replica moves on after the mark: it no longer tells the bar
            apply([entry(_rows(trades[i:i + 1]))])
            i += 1
        batch = []
        for _ in range(rng.randint(1, 3)):
            k = rng.randint(1, 6)
            rows = _rows(trades[i:i + k])
            i += k
            roll = rng.random()
            if roll < 0.05 and builder.base is not None:  # a late trade, into a closed bar
                rows.insert(rng.randrange(len(rows) + 1), (10**9 + n, builder.base.ts - 1500, Decimal("60000"),
                                                           Decimal("0.01"), True))
                kinds.add("late")
            elif roll < 0.08:  # a jump over a few bars (a quiet spell)
                skip = next((j for j in range(i, len(trades)) if trades[j].ts >= trades[i].ts + 3000), i)
                kinds.add("jump") if skip > i else None
                i = skip
            batch.append(entry(rows))
        if rng.random() < 0.03 and batch:  # a re-delivered entry (applied already)
            apply(batch[:1])
            kinds.add("again")
        verdict = fast.closes(PAIR, batch, mark)
        emitted = apply(batch)
        verdicts[verdict] += 1
        if verdict is True:
            assert marked and emitted == marked, (emitted, marked)
        elif verdict is False:
            assert emitted == []
    assert kinds == {"late", "jump", "again"}
    # each answer was given often: the checks above ran
    assert min(verdicts.values()) >= 100, verdicts


def test_confirms_tells_what_confirm_will_do_without_doing_it():
    """A batch holding candle_builder's candles can still be handled ahead when each only confirms a bar closed here
    (``confirm`` drops it): ``confirms`` says so without touching the replica's bookkeeping; a candle that differs, a
    revision or a history candle is not one."""
    trades = read_trades(shared_data(BTC))[:400]
    fast = FastClose(redis=None)
    fast.replicas[PAIR] = Replica(SeriesBuilder(sorted(TFS), base="1s", flat_candles=False), (0, 0))
    closed = []
    for n, t in enumerate(trades, 1):
        closed += fast.apply(PAIR, b"%d-0" % n, TradeBatch(*PAIR, _rows([t])), TFS)
    assert len(closed) >= 5
    bar = closed[2]
    copy = bar.model_copy()  # candle_builder's candle of the same bar: equal, another object
    other = bar.model_copy(update={"close": bar.close + 1})
    pending = {k: dict(v) for k, v in fast.pending.items()}
    assert fast.confirms(copy)
    assert not fast.confirms(other)
    assert not fast.confirms(bar.model_copy(update={"revision": 1}))
    assert not fast.confirms(bar.model_copy(update={"history": True}))
    assert fast.pending == pending and fast.confirmed == 0 and not fast.last_builder  # nothing changed
    assert fast.confirm(copy) is False and fast.confirmed == 1  # ... and confirm then drops it
    assert not fast.confirms(copy)  # (confirmed once: a second copy is not a confirmation)
