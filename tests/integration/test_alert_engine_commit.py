"""alert_engine's one-call commit (gate + alert writes + RULE_STATE rows + XACKs in one script) on a real redis-server:
a flushed script cache loses and repeats nothing, a replay's rows never claim a publish that did not happen, and the
candles are acked only with their alerts."""

from __future__ import annotations

from decimal import Decimal

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from shared import streams
from shared.bus import FIELD, Bus
from shared.schemas import Alert, Candle, unpack

EX, SYM, TF, TF_MS = "binance", "XRP/ETH", "1m", 60_000
T0 = 1_570_752_000_000
RULES = f"""
rules:
  - {{name: above, exchange: {EX}, symbols: [{SYM}], timeframe: {TF}, frequency: every_time,
     condition: {{op: above, right: 10}}}}
  - {{name: above_cd, exchange: {EX}, symbols: [{SYM}], timeframe: {TF}, frequency: every_time, cooldown: 3m,
     condition: {{op: above, right: 10}}}}
"""


def _settings(tmp_path, name: str) -> Settings:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return Settings(rules_file=path, consumer_name=name, warmup_bars=10, block_ms=50, redis_url="redis://unused")


def _candle(i: int, close: int) -> Candle:
    p = Decimal(close)
    return Candle(exchange=EX, symbol=SYM, timeframe=TF, ts=T0 + i * TF_MS, open=p, high=p, low=p, close=p,
                  volume=Decimal(1), buy_volume=Decimal(1), sell_volume=Decimal(0))


async def _publish(redis, candles: list[Candle]) -> None:
    await Bus(redis).publish_many((streams.candles(EX, SYM, TF), c.encode()) for c in candles)
    await redis.sadd(streams.CANDLE_REGISTRY, streams.registry_member(EX, SYM, TF))


def _expected(closes: list[int]) -> dict[str, set[int]]:
    """Independently: `above` fires on every bar over 10; `above_cd` too, at most once per 3 bars (close time)."""
    above = {T0 + i * TF_MS for i, c in enumerate(closes) if c > 10}
    cooled, until = set(), None
    for ts in sorted(above):
        close = ts + TF_MS
        if until is None or close >= until:
            cooled.add(ts)
            until = close + 3 * TF_MS
    return {"above": above, "above_cd": cooled}


async def _alerts(redis) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for _, f in await redis.xrange(streams.ALERTS):
        a = Alert.decode(f[FIELD])
        out.setdefault(a.rule, []).append(a.ts)
    return out


async def test_a_flushed_script_cache_loses_and_repeats_nothing(redis, tmp_path):
    closes = [5, 11, 12, 13, 9, 14, 15, 16, 17, 3, 18, 19]
    app = AlertEngineApp(_settings(tmp_path, "engine-1"), redis)
    await _publish(redis, [_candle(i, c) for i, c in enumerate(closes[:6])])
    await app.drain(final=False)
    await redis.script_flush()  # as a restarted Redis: the next EVALSHA gets NOSCRIPT
    await _publish(redis, [_candle(i, c) for i, c in enumerate(closes) if i >= 6])
    await app.drain()
    got = await _alerts(redis)
    want = _expected(closes)
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}
    assert all(len(v) == len(set(v)) for v in got.values())  # no alert twice
    assert await redis.xlen(streams.ALERT_HISTORY) == sum(len(v) for v in want.values())
    pending = await redis.xpending(streams.candles(EX, SYM, TF), streams.GROUP_ALERT_ENGINE)
    assert pending["pending"] == 0  # every candle acked, with its alerts
    rows = {unpack(v)["rule"]: unpack(v) for v in (await redis.hgetall(streams.RULE_STATE)).values()}
    last = max(want["above_cd"])
    assert rows["above_cd"]["last_fired"] == last + TF_MS
    assert rows["above_cd"]["cooldown_until"] == last + TF_MS + 3 * TF_MS


async def test_a_replay_writes_no_row_claiming_a_publish(redis, tmp_path):
    closes = [11, 12, 13, 14, 15]
    await _publish(redis, [_candle(i, c) for i, c in enumerate(closes)])
    first = AlertEngineApp(_settings(tmp_path, "engine-1"), redis)
    await first.drain()
    n = await redis.xlen(streams.ALERTS)
    assert n == sum(len(v) for v in _expected(closes).values())
    # a new group re-reads everything: every gate answers "duplicate", which the replica could not predict
    await redis.xgroup_destroy(streams.candles(EX, SYM, TF), streams.GROUP_ALERT_ENGINE)
    replay = AlertEngineApp(_settings(tmp_path, "engine-2"), redis)
    await replay.drain()
    assert replay.commit.published == 0 and replay.commit.duplicates > 0
    assert await redis.xlen(streams.ALERTS) == n
    rows = {unpack(v)["rule"]: unpack(v) for v in (await redis.hgetall(streams.RULE_STATE)).values()}
    assert set(rows) == {"above", "above_cd"}
    for row in rows.values():  # written by the replay (which published nothing): no last_fired, no cooldown of ours
        assert row["last_fired"] is None and row["cooldown_until"] is None, row
        assert row["last_alert_id"]
    assert replay.engine.status and all(st.last_fired_ms is None for st in replay.engine.status.values())
    pending = await redis.xpending(streams.candles(EX, SYM, TF), streams.GROUP_ALERT_ENGINE)
    assert pending["pending"] == 0


async def test_one_commit_of_thousands_of_alerts_writes_every_alert_and_every_row_once(redis, tmp_path):
    """A bar boundary over 5,000 series: one commit carries 5,000 alerts and their RULE_STATE rows (the script writes
    the rows in chunks: Lua's unpack has a stack limit); a replay of the same fires publishes nothing."""
    path = tmp_path / "rules.yaml"
    path.write_text(f"rules:\n  - {{name: every, exchange: {EX}, symbols: ['*'], timeframe: {TF}, "
                    "frequency: every_time, condition: {op: above, right: 10}}\n")
    app = AlertEngineApp(Settings(rules_file=path, redis_url="redis://unused"), redis)
    p = Decimal(11)
    candles = [Candle(exchange=EX, symbol=f"S{i}/USDT", timeframe=TF, ts=T0, open=p, high=p, low=p, close=p,
                      volume=Decimal(1), buy_volume=Decimal(1), sell_volume=Decimal(0)) for i in range(5000)]
    fires = app.engine.on_batch(candles)
    assert len(fires) == 5000
    assert await app.publish(fires) == [1] * 5000
    assert await redis.xlen(streams.ALERTS) == 5000 and await redis.xlen(streams.ALERT_HISTORY) == 5000
    rows = {k.decode(): unpack(v) for k, v in (await redis.hgetall(streams.RULE_STATE)).items()}
    assert set(rows) == {f.fingerprint for f in fires}
    assert all(row["last_fired"] == T0 + TF_MS for row in rows.values())
    assert await app.publish(fires) == [0] * 5000  # a replay
    assert await redis.xlen(streams.ALERTS) == 5000
