"""alert_engine against a real redis-server: alerts from a real recording's candles equal an independent pandas scan,
cooldowns survive a restart, a replay publishes nothing twice, a bad rules reload keeps the old rules."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pandas as pd

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from shared import streams
from shared.partitions import partition_of
from shared.rules import parse_rules
from shared.schemas import Alert, Candle
from tests.conftest import shared_data
from tests.unit.alert_engine import pdref
from tests.support.subscriptions import subscribed, subscribers
from tests.support.alerts import count_alerts, read_alerts, rule_state_rows
from tests.support.engine_candles import publish_candles, publish_live

XRP = "binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv"
EX, SYM, TF, TF_MS = "binance", "XRP/ETH", "5m", 300_000


def _settings(tmp_path, name="engine-1", rules_text: str | None = None) -> Settings:
    path = tmp_path / "rules.yaml"
    if rules_text is not None:
        path.write_text(rules_text)
    return Settings(rules_file=path, consumer_name=name, warmup_bars=300, block_ms=50, redis_url="redis://unused")


async def _publish(redis, candles: list[Candle]) -> None:
    await publish_candles(redis, candles)


async def _alerts(redis) -> list[Alert]:
    return await read_alerts(redis)


def _rules(level: Decimal) -> str:
    return f"""
rules:
  - {{name: x_up, exchange: {EX}, symbols: ["*/ETH"], timeframe: {TF}, frequency: every_time,
     condition: {{op: crosses_up, right: {level}}}}}
  - {{name: x_down, exchange: {EX}, symbols: ["*/ETH"], timeframe: {TF}, frequency: every_time,
     condition: {{op: crosses_down, right: {level}}}}}
  - {{name: above_cd, symbols: [XRP/ETH], timeframe: {TF}, cooldown: 30m, frequency: every_time,
     condition: {{op: above, right: {level}}}}}
  - {{name: ema_cross, symbols: [XRP/ETH], timeframe: {TF}, frequency: once_per_bar_close,
     condition: {{left: {{ema: 5}}, op: crosses_down, right: {{sma: 12}}}}}}
"""


def _expected(df: pd.DataFrame, level: Decimal) -> dict[str, set[int]]:
    x, lv = df["close"], float(level)
    exp = {
        "x_up": set(df["ts"][pdref.cross_up(x, lv)]),
        "x_down": set(df["ts"][pdref.cross_down(x, lv)]),
        "ema_cross": set(df["ts"][pdref.cross_down(pdref.ema(x, 5), pdref.sma(x, 12))]),
    }
    fired, until = set(), None  # cooldown in exchange time (candle close), applied independently
    for ts, above in zip(df["ts"], x > lv, strict=True):
        close = ts + TF_MS
        if above and (until is None or close >= until):
            fired.add(ts)
            until = close + 30 * 60_000
    exp["above_cd"] = fired
    return exp


async def test_alerts_from_a_real_recording_equal_pandas(redis, tmp_path):
    candles = pdref.candles_from_csv(shared_data(XRP), EX, SYM, TF, TF_MS)
    df = pdref.frame(candles)
    level = Decimal(str(df["close"].median()))
    settings = _settings(tmp_path, rules_text=_rules(level))
    await _publish(redis, candles)
    app = AlertEngineApp(settings, redis)
    await app.drain()
    got: dict[str, set[int]] = {}
    for a in await _alerts(redis):
        got.setdefault(a.rule, set()).add(a.ts)
        assert a.exchange == EX and a.symbol == SYM and a.timeframe == TF and a.fired_at == a.ts + TF_MS
    expected = _expected(df, level)
    for name, want in expected.items():
        assert want, name
        assert got.get(name, set()) == want, (name, sorted(got.get(name, set()) ^ want)[:5])
    history = await count_alerts(redis)
    assert history == sum(len(v) for v in expected.values())
    # the engine asked the candle builder for the series, and left the rule state for the API
    assert streams.registry_member(EX, SYM, TF) in await subscribers(redis)
    states = {row["rule"] for row in (await rule_state_rows(redis)).values()}
    assert states == set(expected)

    # Replay: the partition's offsets lost (as after losing the engine's state) re-reads every candle; nothing is
    # published twice.
    await redis.delete(streams.part_state(partition_of(EX, SYM, 16), streams.GROUP_ALERT_ENGINE))
    replay = AlertEngineApp(_settings(tmp_path, "engine-2"), redis)
    await replay.drain()
    assert replay.counts()["published"] == 0 and replay.counts()["duplicates"] > 0
    assert await count_alerts(redis) == history


def _candle(i: int, close: str) -> Candle:
    p = Decimal(close)
    return Candle(exchange=EX, symbol=SYM, timeframe=TF, ts=1_570_752_000_000 + i * TF_MS, open=p, high=p, low=p,
                  close=p, volume=Decimal(1), buy_volume=Decimal(1), sell_volume=Decimal(0))


async def test_a_restarted_engine_honours_cooldowns_and_crossing_state(redis, tmp_path):
    rules = f"""
rules:
  - {{name: hot, symbols: [{SYM}], exchange: {EX}, timeframe: {TF}, cooldown: 20m, frequency: every_time,
     condition: {{op: above, right: 10}}}}
  - {{name: up, symbols: [{SYM}], exchange: {EX}, timeframe: {TF}, frequency: every_time,
     condition: {{op: crosses_up, right: 10}}}}
"""
    settings = _settings(tmp_path, rules_text=rules)
    closes = ["9", "11", "9", "12", "9", "12", "12", "12", "12", "12", "12"]
    await _publish(redis, [_candle(i, c) for i, c in enumerate(closes[:3])])
    first = AlertEngineApp(settings, redis)
    await first.drain()
    # a different process (new consumer name, empty memory) continues from where the group stopped
    await _publish(redis, [_candle(i, c) for i, c in enumerate(closes) if i >= 3])
    second = AlertEngineApp(_settings(tmp_path, "engine-2"), redis)
    await second.drain()
    got = sorted(((a.rule, (a.ts - 1_570_752_000_000) // TF_MS) for a in await _alerts(redis)))
    # Independent expectation, cooldown in exchange time; "up" crosses at bars 1, 3 and 5 — the crossing at bar 3,
    # the second engine's first candle, needs bar 2 from the warm-up (the first engine's memory is gone).
    want_hot, until = [], None
    for i, c in enumerate(closes):
        close_ms = (i + 1) * TF_MS
        if Decimal(c) > 10 and (until is None or close_ms >= until):
            want_hot.append(i)
            until = close_ms + 20 * 60_000
    want_up = [i for i in range(1, len(closes)) if Decimal(closes[i - 1]) <= 10 < Decimal(closes[i])]
    assert got == sorted([("hot", i) for i in want_hot] + [("up", i) for i in want_up])
    assert ("up", 3) in got and second.counts()["suppressed"] > 0


async def test_a_bad_rules_file_on_reload_keeps_the_old_rules(redis, tmp_path):
    good = f"rules:\n  - {{name: a, symbols: [{SYM}], timeframe: {TF}, condition: {{op: above, right: 10}}}}\n"
    settings = _settings(tmp_path, rules_text=good)
    app = AlertEngineApp(settings, redis)
    settings.rules_file.write_text(good.replace("above", "abovee"))
    await asyncio.sleep(0.01)
    import os
    os.utime(settings.rules_file, ns=(1, 1))
    assert not await app.reload_rules()
    assert [r.name for r in app.rules] == ["a"] and "rules.yaml:2" in (app.reload_error or "")
    settings.rules_file.write_text(good.replace("name: a", "name: b"))
    os.utime(settings.rules_file, ns=(2, 2))
    assert await app.reload_rules()
    assert [r.name for r in app.rules] == ["b"]


async def test_api_rules_override_file_rules(redis, tmp_path):
    good = f"rules:\n  - {{name: a, symbols: [{SYM}], timeframe: {TF}, condition: {{op: above, right: 10}}}}\n"
    app = AlertEngineApp(_settings(tmp_path, rules_text=good), redis)
    await redis.hset(streams.RULES, "a", "name: a\nsymbols: [X/Y]\nenabled: false\ncondition: {op: above, right: 1}\n")
    await redis.hset(streams.RULES, "c", f"name: c\nsymbols: [{SYM}]\ncondition: {{op: below, right: 1}}\n")
    assert await app.reload_rules()
    assert [r.name for r in app.rules] == ["c"]
    assert parse_rules(good, "x").rules[0].name == "a"


async def test_subscriptions_follow_the_rules_and_intrabar_reads_live_candles(redis, tmp_path):
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, SYM), streams.registry_member(EX, "BTC/ETH"))
    rules = f"rules:\n  - {{name: a, symbols: ['*/ETH'], exchange: {EX}, timeframe: 1m, frequency: once_per_bar," \
            f" condition: {{op: above, right: 10}}}}\n"
    settings = _settings(tmp_path, rules_text=rules)
    app = AlertEngineApp(settings, redis)
    await app.drain()
    assert await subscribers(redis) == {f"{EX}|{SYM}|1m": 1, f"{EX}|BTC/ETH|1m": 1}
    assert streams.part_live(partition_of(EX, SYM, 16)) in app.streams
    await app.sync_series()  # nothing new: the same subscriptions
    assert await subscribers(redis) == {f"{EX}|{SYM}|1m": 1, f"{EX}|BTC/ETH|1m": 1}
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, "LTC/ETH"))  # a pair appears: followed
    await app.sync_series()
    assert await subscribers(redis) == {f"{EX}|{SYM}|1m": 1, f"{EX}|BTC/ETH|1m": 1, f"{EX}|LTC/ETH|1m": 1}
    # an in-progress candle above the level fires once_per_bar intrabar; the close of the same bar does not repeat it
    live = _candle(0, "11").model_copy(update={"timeframe": "1m", "closed": False})
    await publish_live(redis, live)
    await app.drain(final=False)
    await publish_candles(redis, [live.model_copy(update={"closed": True})])
    await app.drain(final=False)
    alerts = await _alerts(redis)
    assert [(a.rule, a.ts) for a in alerts] == [("a", live.ts)] and app.counts()["duplicates"] == 1
    # the rule now needs only BTC/ETH on 5m: the others are released, the new one counted
    settings.rules_file.write_text(rules.replace("'*/ETH'", "BTC/ETH").replace("1m", "5m"))
    import os
    os.utime(settings.rules_file, ns=(5, 5))
    assert await app.reload_rules()
    assert await subscribers(redis) == {f"{EX}|BTC/ETH|5m": 1}
    stop = asyncio.Event()
    stop.set()
    await app.run(stop)  # a clean stop releases what the engine holds
    assert await subscribed(redis) == {}


async def test_file_rules_are_written_for_the_api_and_follow_reloads(redis, tmp_path):
    import os

    import yaml
    text = f"""rules:
  - name: a   # a comment, flow style and quoting as a user writes them
    symbols: ["{SYM}"]
    timeframe: {TF}
    condition: {{op: above, right: 10.50}}
    cooldown: 90s
  - name: b
    symbols: [{SYM}]
    condition:
      left: close
      op: crosses_down
      right: {{ema: 21}}
    message: '{{symbol}} under EMA21'
"""
    settings = _settings(tmp_path, rules_text=text)
    app = AlertEngineApp(settings, redis)
    assert await redis.exists(streams.FILE_RULES) == 0  # written when the service starts, not on construction
    await app.drain()
    # independent check: PyYAML's own reading of the file, rule by rule
    want = {r["name"]: r for r in yaml.safe_load(text)["rules"]}
    stored = {k.decode(): v.decode() for k, v in (await redis.hgetall(streams.FILE_RULES)).items()}
    assert {k: yaml.safe_load(v) for k, v in stored.items()} == want
    assert list(yaml.safe_load(stored["a"])) == ["name", "symbols", "timeframe", "condition", "cooldown"]  # file order

    # a reload with rule a removed and b changed: the hash is replaced, a disappears
    changed_b = want["b"] | {"condition": {"op": "below", "right": 3}}
    settings.rules_file.write_text(yaml.safe_dump({"rules": [changed_b]}))
    os.utime(settings.rules_file, ns=(2, 2))
    assert await app.reload_rules()
    stored = {k.decode(): yaml.safe_load(v) for k, v in (await redis.hgetall(streams.FILE_RULES)).items()}
    assert stored == {"b": changed_b}

    # a bad file keeps both the running rules and the hash
    settings.rules_file.write_text("rules:\n  - {name: z, condition: {op: sideways}}\n")
    os.utime(settings.rules_file, ns=(3, 3))
    assert not await app.reload_rules()
    assert await redis.hkeys(streams.FILE_RULES) == [b"b"]
    # an empty file empties the hash
    settings.rules_file.write_text("rules: []\n")
    os.utime(settings.rules_file, ns=(4, 4))
    assert await app.reload_rules()
    assert await redis.exists(streams.FILE_RULES) == 0


async def test_a_pair_appearing_between_two_registry_reads_loses_no_bar(redis, tmp_path):
    """The registries are read every 60 s here: the pair's first candles reach a running engine whose plan does not
    list it yet. That read is not committed; the plan is made again at once and the bars are evaluated (before, they
    would have been skipped and their offset committed: no alert, ever)."""
    rules = f"rules:\n  - {{name: a, symbols: ['*/ETH'], exchange: {EX}, timeframe: {TF}, frequency: every_time," \
            f" condition: {{op: above, right: 10}}}}\n"
    settings = _settings(tmp_path, rules_text=rules).model_copy(update={"registry_poll_s": 60.0, "clock": "exchange"})
    app = AlertEngineApp(settings, redis)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        async with asyncio.timeout(20):
            while not app.workers.owned:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            # a 1m candle of the pair first (no rule reads 1m), then the 5m ones the rule reads
            first = _candle(0, "11").model_copy(update={"timeframe": "1m"})
            await _publish(redis, [first] + [_candle(i, c) for i, c in enumerate(["11", "9", "12"])])
            while len(await _alerts(redis)) < 2:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    assert sorted((a.rule, (a.ts - 1_570_752_000_000) // TF_MS) for a in await _alerts(redis)) == [("a", 0), ("a", 2)]
