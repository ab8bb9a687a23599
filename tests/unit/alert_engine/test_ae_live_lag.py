"""An in-progress candle read before the closed bars just before it (the live-candle stream ran ahead of a backlogged
candle stream in one read) is not evaluated: on the series as the engine holds it then, ``offset 1`` would be an
older bar and the indicator windows would have a hole, so an intrabar crossing could fire that the market never
made. Checked against pandas on the real BTCUSDT 1s recording (empty seconds filled with flat candles, as
candle_builder publishes them)."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd

from services.alert_engine.core import AlertEngine
from shared.rules import parse_rules
from tests.conftest import shared_data
from tests.unit.alert_engine import pdref

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
KEY = ("binance", "BTC/USDT", "1s")
LAG = 5  # closed bars the engine has not read yet when the in-progress candle comes
RULES = """
rules:
  - {name: sma20, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: crossing, right: {sma: 20}}}
"""


def _contiguous(path) -> list:
    """The recording's 1s candles with a flat candle (OHLC = previous close, no volume) in each empty second."""
    out = []
    for c in pdref.candles_from_csv(path, *KEY, 1000):
        while out and out[-1].ts + 1000 < c.ts:
            p = out[-1].close
            z = Decimal(0)
            out.append(out[-1].model_copy(update={
                "ts": out[-1].ts + 1000, "open": p, "high": p, "low": p, "close": p, "volume": z, "buy_volume": z,
                "sell_volume": z, "quote_volume": z, "trades": 0, "first_trade_id": None, "last_trade_id": None}))
        out.append(c)
    return out


def _crossing_at(closes: list[float], period: int) -> bool:
    """pandas: the last value of ``closes`` crosses the SMA(period) of ``closes`` (either way), from the one before."""
    x = pd.Series(closes)
    return bool(pdref.crossing(x, pdref.sma(x, period)).fillna(False).astype(bool).iloc[-1])


def test_an_in_progress_candle_ahead_of_the_closed_bars_read_is_not_evaluated():
    candles = _contiguous(shared_data(BTC))
    assert len({c.ts for c in candles}) == len(candles) == (candles[-1].ts - candles[0].ts) // 1000 + 1
    closes = [float(c.close) for c in candles]
    engine = AlertEngine(parse_rules(RULES, "t.yaml"))
    caught_up: set[int] = set()  # bars whose in-progress candle fired, read after the bar before it
    lagging: set[int] = set()  # ... read LAG bars early
    would: set[int] = set()  # pandas on the series the engine held when the early one came (the hole)
    for i, c in enumerate(candles):
        early = i + 1 + LAG  # its in-progress candle arrives while the engine's last closed bar is i - 1
        if i and early < len(candles):
            live = candles[early].model_copy(update={"closed": False})
            lagging |= {f.alert.ts for f in engine.on_live_candle(live)}
            if _crossing_at(closes[:i] + [closes[early]], 20):
                would.add(candles[early].ts)
        live = c.model_copy(update={"closed": False})  # bar i in progress, bar i - 1 closed: evaluated
        caught_up |= {f.alert.ts for f in engine.on_live_candle(live)}
        engine.on_candle(c)
    assert len(engine.windows[KEY].candles) == min(len(candles), engine.keep)
    assert lagging == set() and len(would) >= 5, "the early candles would have made crossings of their own"
    # read in order, the in-progress candle (here its final state) crosses exactly when the closed bar does
    x = pd.Series(closes)
    cond = pdref.crossing(x, pdref.sma(x, 20)).fillna(False).astype(bool)
    want = {candles[k].ts for k in range(len(candles)) if cond.iloc[k]}
    assert caught_up == want and len(want) >= 20


XRP = "binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv"  # ~6k trades in a day: many minutes without one
XRP_KEY = ("binance", "XRP/ETH", "1m")
XRP_RULES = """
rules:
  - {name: sma20, symbols: [XRP/ETH], timeframe: 1m, frequency: every_time,
     condition: {op: crossing, right: {sma: 20}}}
"""


def test_without_flat_candles_prev_ts_lets_the_bar_after_an_empty_interval_be_evaluated():
    """``flat_candles: false``: the recording's 1m candles only where there were trades. Each in-progress candle
    names its predecessor (``prev_ts``, as candle_builder publishes it), so a bar after empty minutes is evaluated
    — on time, exactly where pandas has the crossing on the same series — and one read ahead of that predecessor is
    still skipped. A candle without ``prev_ts`` must follow its predecessor directly (a bar after a gap is skipped)."""
    candles = pdref.candles_from_csv(shared_data(XRP), *XRP_KEY, 60_000)
    after_gap = {c.ts for p, c in zip(candles, candles[1:]) if c.ts - p.ts > 60_000}
    assert len(after_gap) >= 50, "the recording has empty minutes"
    closes = [float(c.close) for c in candles]
    engine, legacy = AlertEngine(parse_rules(XRP_RULES, "t.yaml")), AlertEngine(parse_rules(XRP_RULES, "t.yaml"))
    caught_up: set[int] = set()
    lagging: set[int] = set()
    without_prev: set[int] = set()
    for i, c in enumerate(candles):
        early = i + 1 + LAG
        if i and early < len(candles):  # names bar early - 1 as its predecessor: the engine holds only i - 1
            live = candles[early].model_copy(update={"closed": False, "prev_ts": candles[early - 1].ts})
            lagging |= {f.alert.ts for f in engine.on_live_candle(live)}
        prev = candles[i - 1].ts if i else None
        caught_up |= {f.alert.ts for f in engine.on_live_candle(c.model_copy(update={"closed": False,
                                                                                    "prev_ts": prev}))}
        without_prev |= {f.alert.ts for f in legacy.on_live_candle(c.model_copy(update={"closed": False}))}
        engine.on_candle(c)
        legacy.on_candle(c)
    x = pd.Series(closes)
    cond = pdref.crossing(x, pdref.sma(x, 20)).fillna(False).astype(bool)
    want = {candles[k].ts for k in range(len(candles)) if cond.iloc[k]}
    assert lagging == set()
    assert caught_up == want and len(want & after_gap) >= 3
    assert without_prev == want - after_gap
