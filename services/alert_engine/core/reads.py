"""What a rule's condition reads: its leaves, operands and other series, whether it can run on a single trade or
ticker, and how many closed candles it needs before its first evaluation (its look-back)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared import rules as r
from shared.timeframes import timeframe_ms

#: a condition leaf (a node that is not ``all``/``any``)
Leaf = r.Compare | r.Channel | r.Moving | r.VolumeSpike


def leaves(cond: Any) -> list[Leaf]:
    """The leaf conditions of ``cond``, depth first."""
    if isinstance(cond, r.All):
        return [x for c in cond.all for x in leaves(c)]
    if isinstance(cond, r.AnyOf):
        return [x for c in cond.any for x in leaves(c)]
    return [cond]


def operands(cond: Any, own_only: bool = False) -> list[Any]:
    """Every operand of ``cond``'s leaves (``own_only``: of the leaves reading the rule's own series)."""
    out: list[Any] = []
    for leaf in leaves(cond):
        if own_only and (leaf.timeframe is not None or leaf.symbol is not None):
            continue
        fields = type(leaf).model_fields  # (not hasattr: a pydantic model raises inside for each missing one)
        out += [getattr(leaf, name) for name in ("left", "right", "lower", "upper") if name in fields]
    return out


def wheres(cond: Any) -> list[tuple[str | None, str | None]]:
    """(timeframe, symbol) of each leaf: None where it reads the rule's own."""
    return [(leaf.timeframe, leaf.symbol) for leaf in leaves(cond)]


def feed_kinds(cond: Any) -> frozenset[str]:
    """The book / futures updates (``book``, ``funding``, ``open_interest``, ``liquidations``) whose operands ``cond``
    reads: a rule reading any is evaluated on those updates of its pair, not on candles."""
    return frozenset(k for o in operands(cond) if (k := r.feed_kind(o)) is not None)


def reads_candles(cond: Any) -> bool:
    """Some operand is a candle or ticker field or an indicator (not a number, nor a book / futures operand)."""
    return any(not isinstance(o, Decimal) and r.feed_kind(o) is None for o in operands(cond))


def feed_horizon_ms(cond: Any) -> int:
    """The longest window of ``cond``'s open-interest and liquidation operands (0: none)."""
    return max([o.window for o in operands(cond) if isinstance(o, (r.OpenInterestChange, r.Liquidations))] or [0])


def uses_tickers(cond: Any) -> bool:
    return any(isinstance(o, str) and o in r.TICKER_FIELDS for o in operands(cond))


def reads_price(cond: Any) -> bool:
    """Some leaf on the rule's own series reads ``price`` (the last trade's, at tick level)."""
    return any(isinstance(o, str) and o == "price" for o in operands(cond, own_only=True))


def tick_level(cond: Any) -> bool:
    """Defined on a single trade/ticker: comparisons and channels of ``price``, ticker fields, numbers and indicators
    (moves and spikes need bars; a leaf on another series reads that series' closed bars)."""
    for leaf in leaves(cond):
        if leaf.timeframe is not None or leaf.symbol is not None:
            continue
        if not isinstance(leaf, (r.Compare, r.Channel)):
            return False
        if not all(isinstance(o, (Decimal, r.IndicatorSpec)) or o in ("price", *r.TICKER_FIELDS)
                   for o in operands(leaf)):
            return False
    return True


def warmup_bars(spec: r.IndicatorSpec, tf_ms: int) -> int:
    """Closed candles an indicator needs before its values no longer depend on where the series started (to ~e^-6 or
    better): moving averages their period; EMA 3x it; Wilder smoothing (RSI, ATR; alpha 1/n, slower than EMA's
    2/(n+1)) 10x so RSI converges; MACD the slow EMA's warm-up, then the signal's on top of it."""
    if isinstance(spec, r.EMA):
        return 3 * spec.period
    if isinstance(spec, (r.RSI, r.ATR)):
        return 10 * spec.period + 1
    if isinstance(spec, r.MACD):
        return 3 * (spec.slow + spec.signal)
    if isinstance(spec, (r.SMA, r.BBands, r.VolumeSMA)):
        return spec.period
    if isinstance(spec, r.CVD):
        return spec.bars if spec.bars is not None else -(-timeframe_ms(spec.anchor or "1d") // tf_ms)
    if isinstance(spec, r.VWAP):
        return -(-timeframe_ms(spec.anchor) // tf_ms)
    return 1


def condition_bars(leaf: Leaf, tf_ms: int) -> int:
    """Bars one leaf condition reads back: its operands' warm-up plus what the condition itself looks back."""
    back = 1  # crossings, entering/exiting compare with the bar before
    if isinstance(leaf, r.Moving):
        back = leaf.bars if leaf.window_ms is None else -(-leaf.window_ms // tf_ms) + 1
    elif isinstance(leaf, r.VolumeSpike):
        return leaf.period + 1
    return max([back + 1] + [warmup_bars(o, tf_ms) + back for o in operands(leaf) if isinstance(o, r.IndicatorSpec)])
