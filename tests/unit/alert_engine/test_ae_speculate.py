"""Speculation (``AlertEngine.speculate``): a bar evaluated before it closes gives, when it closes as it was, exactly
what evaluating the closed bar gives — fires and rule statuses — and a speculation on anything else (a bar that then
changed, a series that changed since) is never taken. Real candles of the BTCUSDT recording, the rules of the
correctness test that read only their own series (every condition type, frequency, cooldown, ``for:``, resolve)."""

from __future__ import annotations

import random

import pytest

from services.alert_engine.core import AlertEngine
from services.alert_engine.rules import parse_rules
from tests.conftest import shared_data
from tests.integration.test_alert_engine_correctness import BTC, _rules
from tests.unit.alert_engine import pdref

CROSS_SERIES = ("mtf_all", "mtf_any", "sym_all", "sym_any")  # read another timeframe or symbol


@pytest.fixture(scope="module")
def candles():
    return pdref.candles_from_csv(shared_data(BTC), "binance", "BTC/USDT", "1s", 1000)


def _own_series_rules(candles, keep: tuple[str, ...] = ()) -> str:
    text, _ = _rules(pdref.frame(candles))
    blocks = text.split("\n  - ")
    kept = [b for b in blocks[1:] if not any(f"name: {n}," in b for n in CROSS_SERIES if n not in keep)]
    # the template names {cvd} and {time}: speculation must give the same messages
    return (blocks[0] + "".join("\n  - " + b.rstrip("\n") for b in kept)
            + "\n  - {name: msg, symbols: ['*'], timeframe: 1s, frequency: every_time, message: '{rule} {symbol} "
              "{close} {cvd} {time} {value}', condition: {op: moving_up_pct, percent: 0.01, bars: 3}}\n")


def _fired(fires) -> list[tuple]:
    return [(f.alert.id, f.alert.state, f.alert.message, str(f.alert.value), f.cooldown_ms, f.now_ms) for f in fires]


def _statuses(engine: AlertEngine) -> dict:
    return {fp: st.as_dict() | {"fired_in_run": st.fired_in_run} for fp, st in engine.status.items()}


def _decoy(candle):
    """The same bar with one more trade at a higher price: what the bar looked like had another trade come (or a
    speculation made before its last trade, seen the other way round)."""
    tick = candle.close.scaleb(-6)
    return candle.model_copy(update={"close": candle.close + tick, "high": max(candle.high, candle.close + tick),
                                     "trades": candle.trades + 1})


def test_a_speculation_on_the_bar_as_it_closes_gives_what_evaluating_it_gives(candles):
    ruleset = parse_rules(_own_series_rules(candles), "rules.yaml")
    plain, ahead = AlertEngine(ruleset, keep=60), AlertEngine(ruleset, keep=60)
    key = ("binance", "BTC/USDT", "1s")
    rng = random.Random(3)
    taken = decoys = fired = 0
    for i, candle in enumerate(candles):
        want = plain.on_batch([candle])
        specs = {}
        if i and ahead.speculable(key):
            if rng.random() < 0.4:  # a guess that turns out wrong: never taken, and leaves nothing behind
                specs[key] = ahead.speculate(_decoy(candle))
                decoys += 1
            if rng.random() < 0.8:  # the bar as it closes (several guesses in a row: the last one counts)
                specs[key] = ahead.speculate(candle)
        before = ahead.speculations_taken
        got = ahead.on_batch([candle], speculations=specs)
        taken += ahead.speculations_taken - before
        fired += len(want)
        assert _fired(got) == _fired(want), (i, candle.ts)
        assert _statuses(ahead) == _statuses(plain), (i, candle.ts)
    assert taken > 0.6 * len(candles) and decoys > 0.3 * len(candles), (taken, decoys)
    assert fired > 100  # the rules fire, resolve and cool down along the way: there is something to get wrong
    for spec, ind in plain.series[key].ind.items():  # the indicators saw the same candles
        assert ahead.series[key].ind[spec].get(0) == ind.get(0), spec
    assert list(ahead.series[key].candles) == list(plain.series[key].candles)


def test_a_speculation_is_void_once_its_series_or_its_rules_changed(candles):
    ruleset = parse_rules(_own_series_rules(candles), "rules.yaml")
    plain, engine = AlertEngine(ruleset, keep=60), AlertEngine(ruleset, keep=60)
    key = ("binance", "BTC/USDT", "1s")

    def both(candle, spec=None):
        want = plain.on_batch([candle])
        specs = {key: spec} if spec is not None else {}
        got = engine.on_batch([candle], speculations=specs)
        assert _fired(got) == _fired(want) and _statuses(engine) == _statuses(plain)
        assert not specs  # used or found void, it is gone

    for c in candles[:50]:
        both(c)
    stale = engine.speculate(candles[50])
    both(candles[50])  # evaluated without it: the series moved on
    both(candles[51], stale)
    assert engine.speculations_taken == 0
    # a late revision of the last bar changes the indicators under a speculation of the next one
    spec = engine.speculate(candles[52])
    both(_decoy(candles[51]).model_copy(update={"revision": 1}))
    both(candles[52], spec)
    assert engine.speculations_taken == 0
    spec = engine.speculate(candles[53])
    engine.set_rules(ruleset)  # a reload (even of the same rules) voids what was worked out under the old ones
    plain.set_rules(ruleset)
    both(candles[53], spec)
    assert engine.speculations_taken == 0
    both(candles[54], engine.speculate(candles[54]))
    assert engine.speculations_taken == 1


def test_series_whose_rules_read_other_series_or_tickers_are_not_speculated(candles):
    engine = AlertEngine(parse_rules(_own_series_rules(candles, keep=("mtf_all",)), "rules.yaml"), keep=60)
    for c in candles[:30]:
        engine.on_batch([c])
    assert not engine.speculable(("binance", "BTC/USDT", "1s"))
    assert engine.speculate(candles[30]) is None
    tickers = AlertEngine(parse_rules("rules:\n  - {name: s, symbols: ['*'], timeframe: 1s, "
                                      "condition: {left: spread_bps, op: above, right: 1}}\n", "r.yaml"))
    for c in candles[:30]:
        tickers.on_batch([c])
    assert tickers.speculate(candles[30]) is None


def test_a_rule_status_copy_carries_every_field():
    """``RuleStatus.copy`` (a speculation's copy of each status) lists the fields by hand: a field added to the class
    must be added there too."""
    import dataclasses

    from services.alert_engine.core import RuleStatus

    st = RuleStatus("r", "x", "s", "1s")
    for n, f in enumerate(dataclasses.fields(RuleStatus)):
        setattr(st, f.name, f"v{n}")  # every field a value of its own, none its default
    copied = st.copy()
    assert copied is not st
    assert {f.name: getattr(copied, f.name) for f in dataclasses.fields(RuleStatus)} == \
        {f.name: getattr(st, f.name) for f in dataclasses.fields(RuleStatus)}
