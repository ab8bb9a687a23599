"""``notify_on_resolve`` on a real recording: "resolved" is sent only after a published "firing" of the same run —
never twice without a "firing" between, also when a run's firing alerts were all held back by the cooldown or by
``once`` (the sample rule ``btc_outside_range``'s case: outside, back inside, outside again within its cooldown).

Through a real redis-server and the real AlertEngineApp (the gate is the commit script), compared with an
independent pandas evaluation (``pdref.fires``) of the same rules on the same candles.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from tests.conftest import shared_data
from tests.integration import test_alert_engine_correctness as corr
from tests.unit.alert_engine import pdref
from tests.support.alerts import read_alerts

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
EX, SYM = "binance", "BTC/USDT"


def _rules(lo: str, hi: str) -> str:
    channel = f"{{op: outside_channel, lower: {lo}, upper: {hi}}}"
    return f"""
rules:
  - {{name: outside_cd, symbols: [{SYM}], timeframe: 1s, cooldown: 60s, notify_on_resolve: true,
     condition: {channel}, message: "{{symbol}} close {{close}}: outside {lo}-{hi} is {{state}}"}}
  - {{name: outside_once, symbols: [{SYM}], timeframe: 1s, frequency: once, notify_on_resolve: true,
     condition: {channel}}}
  - {{name: outside_for, symbols: [{SYM}], timeframe: 1s, for: 3s, cooldown: 30s, notify_on_resolve: true,
     condition: {channel}}}
"""


@pytest.mark.parametrize("batch", [1, 500])
async def test_resolved_only_follows_a_published_firing_on_a_real_recording(redis, tmp_path, batch):
    candles = pdref.candles_from_csv(shared_data(BTC), EX, SYM, "1s", 1000)
    df = pdref.frame(candles)
    x = df["close"]
    lo, hi = corr._q(x.quantile(0.35)), corr._q(x.quantile(0.65))
    (tmp_path / "rules.yaml").write_text(_rules(lo, hi))
    await corr._publish(redis, candles)
    app = AlertEngineApp(Settings(rules_file=tmp_path / "rules.yaml", redis_url="redis://unused", clock="exchange",
                                  batch=batch), redis)
    await app.drain()

    sequences: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for a in await read_alerts(redis):
        sequences[a.rule].append((a.ts, a.state))
        if a.rule == "outside_cd":  # the message is true in both states
            assert a.message.endswith(f"outside {lo}-{hi} is {a.state}"), a.message
    for rule, seq in sequences.items():
        states = [state for _, state in seq]
        assert states[0] == "firing", rule
        assert all(not (a == b == "resolved") for a, b in zip(states, states[1:], strict=False)), (rule, states)

    outside = ~pdref.channel("inside_channel", x, float(lo), float(hi)).astype(bool)
    ts, close = df["ts"], df["ts"] + 1000
    kinds = {"outside_cd": dict(frequency="once_per_bar_close", cooldown_ms=60_000),
             "outside_once": dict(frequency="once"),
             "outside_for": dict(frequency="once_per_bar_close", for_ms=3000, cooldown_ms=30_000)}
    runs_ended = sum(1 for i in range(1, len(x)) if outside.iloc[i - 1] and not outside.iloc[i])
    held_back = 0
    for rule, kw in kinds.items():
        want = pdref.fires(outside, ts, close, notify_on_resolve=True, **kw)
        assert set(sequences[rule]) == want, rule
        if "for_ms" not in kw:  # the case this guards: runs (each firing at once) whose firing alerts were all held
            # back, each a resolve the engine used to send anyway
            held_back += runs_ended - sum(1 for _, state in want if state == "resolved")
    assert sum(1 for seq in sequences.values() for _, s in seq if s == "resolved") >= 5
    assert held_back >= 5, "no run's firing was held back: the test would prove nothing"
