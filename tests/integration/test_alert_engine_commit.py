"""alert_engine's commit (gate + alert writes + rule state rows in one script per partition) on a real redis-server
and on a 3-node Redis Cluster: a flushed script cache loses and repeats nothing, a replay's rows never claim a publish
that did not happen, the candles are acked after their alerts, and every alert, record and row lands in the partition
of its pair (one slot per script: no CROSSSLOT)."""

from __future__ import annotations

import asyncio
import zlib
from decimal import Decimal

from redis.asyncio.cluster import RedisCluster

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from shared import streams
from shared.partitions import partition_of
from shared.schemas import Alert, Candle
from tests.support.engine_candles import publish_candles
from tests.support.alerts import count_alerts, read_alerts, rule_state_rows

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
    await publish_candles(redis, candles)


async def _all_read(redis) -> bool:
    """The engine's saved offset of the pair's partition reached the last candle (every candle processed, its alerts
    committed with it)."""
    p = partition_of(EX, SYM, 16)
    [(last, _)] = await redis.xrevrange(streams.part_candles(p), count=1)
    return await redis.hget(streams.part_state(p, streams.GROUP_ALERT_ENGINE),
                            streams.offset_field(streams.part_candles(p))) == last


async def _forget_offsets(redis) -> None:
    await redis.delete(streams.part_state(partition_of(EX, SYM, 16), streams.GROUP_ALERT_ENGINE))


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
    for a in await read_alerts(redis):
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
    assert await count_alerts(redis) == sum(len(v) for v in want.values())
    assert await _all_read(redis)  # every candle's offset committed, with its alerts
    rows = {row["rule"]: row for row in (await rule_state_rows(redis)).values()}
    last = max(want["above_cd"])
    assert rows["above_cd"]["last_fired"] == last + TF_MS
    assert rows["above_cd"]["cooldown_until"] == last + TF_MS + 3 * TF_MS


async def test_a_replay_writes_no_row_claiming_a_publish(redis, tmp_path):
    closes = [11, 12, 13, 14, 15]
    await _publish(redis, [_candle(i, c) for i, c in enumerate(closes)])
    first = AlertEngineApp(_settings(tmp_path, "engine-1"), redis)
    await first.drain()
    n = await count_alerts(redis)
    assert n == sum(len(v) for v in _expected(closes).values())
    # offsets lost: everything is read again, every gate answers "duplicate", which the engine could not predict
    await _forget_offsets(redis)
    replay = AlertEngineApp(_settings(tmp_path, "engine-2"), redis)
    await replay.drain()
    assert replay.counts()["published"] == 0 and replay.counts()["duplicates"] > 0
    assert await count_alerts(redis) == n
    rows = {row["rule"]: row for row in (await rule_state_rows(redis)).values()}
    assert set(rows) == {"above", "above_cd"}
    for row in rows.values():  # written by the replay (which published nothing): no last_fired, no cooldown of ours
        assert row["last_fired"] is None and row["cooldown_until"] is None, row
        assert row["last_alert_id"]
    status = replay.engine_of(EX, SYM).status
    assert status and all(st.last_fired_ms is None for st in status.values())
    assert await _all_read(redis)


async def test_rule_state_rows_follow_the_statuses_and_an_unchanged_status_is_not_written_again(redis, tmp_path):
    """The rows go with the partition's own commits (no periodic write of every row): after a drain every status,
    fired or not, has its row as the engine holds it; a later drain with nothing new writes no row."""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES + f"""  - {{name: never, exchange: {EX}, symbols: [{SYM}], timeframe: {TF},
     condition: {{op: above, right: 1000}}}}
  - {{name: slow, exchange: {EX}, symbols: [{SYM}], timeframe: 5m, condition: {{op: above, right: 1000}}}}
""")
    settings = Settings(rules_file=path, consumer_name="e1", warmup_bars=10, block_ms=50, redis_url="redis://unused")
    closes = [5, 11, 12, 9, 14]
    p5 = Decimal(12)
    await _publish(redis, [_candle(i, c) for i, c in enumerate(closes)] + [Candle(
        exchange=EX, symbol=SYM, timeframe="5m", ts=T0, open=p5, high=p5, low=p5, close=p5, volume=Decimal(5),
        buy_volume=Decimal(5), sell_volume=Decimal(0))])
    app = AlertEngineApp(settings, redis)
    await app.drain(final=False)
    rows = await rule_state_rows(redis)
    status = app.engine_of(EX, SYM).status
    assert set(rows) == set(status) and len(rows) == 4
    last_close = T0 + len(closes) * TF_MS
    for fp, st in status.items():
        row = rows[fp]
        assert (row["state"], row["last_eval"], row["last_value"]) == (st.state, st.last_eval_ms, str(st.last_value))
        assert row["last_eval"] == (T0 + 5 * TF_MS if row["rule"] == "slow" else last_close)
    by_rule = {row["rule"]: row for row in rows.values()}
    assert by_rule["never"]["state"] == "inactive" and by_rule["never"]["last_fired"] is None
    assert by_rule["above"]["state"] == "firing" and by_rule["above"]["last_alert_id"]
    await app.drain(final=False)  # nothing new: no status changed
    assert await rule_state_rows(redis) == rows  # (a row written again would carry a new updated_at)
    await asyncio.sleep(0.01)  # (a row written again now would carry another updated_at)
    await _publish(redis, [_candle(len(closes), 3)])  # one more 1m bar: the 1m statuses change, the 5m one does not
    await app.drain(final=False)
    again = {row["rule"]: row for row in (await rule_state_rows(redis)).values()}
    assert {r: (row["state"], row["last_eval"]) for r, row in again.items() if r != "slow"} == {
        r: ("inactive", last_close + TF_MS) for r in ("above", "above_cd", "never")}
    assert again["slow"] == by_rule["slow"]


async def test_one_commit_of_thousands_of_alerts_writes_every_alert_and_every_row_once(redis, tmp_path):
    """A bar boundary over 5,000 series in one partition: one script call carries 5,000 alerts and their rule state
    rows (the script writes the rows in chunks: Lua's unpack has a stack limit); a replay of the same fires publishes
    nothing."""
    path = tmp_path / "rules.yaml"
    path.write_text(f"rules:\n  - {{name: every, exchange: {EX}, symbols: ['*'], timeframe: {TF}, "
                    "frequency: every_time, condition: {op: above, right: 10}}\n")
    app = AlertEngineApp(Settings(rules_file=path, redis_url="redis://unused", partitions=1), redis)
    p = Decimal(11)
    candles = [Candle(exchange=EX, symbol=f"S{i}/USDT", timeframe=TF, ts=T0, open=p, high=p, low=p, close=p,
                      volume=Decimal(1), buy_volume=Decimal(1), sell_volume=Decimal(0)) for i in range(5000)]
    fires = app.routing.on_batch(candles)
    assert len(fires) == 5000
    assert await app.publish(fires) == [1] * 5000
    assert await redis.xlen(streams.part_alerts(0)) == 5000
    rows = await rule_state_rows(redis, 1)
    assert set(rows) == {f.fingerprint for f in fires}
    assert all(row["last_fired"] == T0 + TF_MS for row in rows.values())
    assert await app.publish(fires) == [0] * 5000  # a replay
    assert await redis.xlen(streams.part_alerts(0)) == 5000


async def test_commit_on_a_redis_cluster_writes_each_alert_in_its_pairs_partition(redis_cluster, tmp_path):
    """Fires of many pairs in one batch, on a 3-master Redis Cluster: one script per partition (no CROSSSLOT), each
    alert in the alerts stream of its pair's partition (an independent CRC-32 of "exchange|symbol"), its fired-id and
    cooldown records and its rule state row beside it; a replay publishes nothing."""
    client = RedisCluster.from_url(redis_cluster.url)
    await client.flushall()
    try:
        path = tmp_path / "rules.yaml"
        path.write_text(f"rules:\n  - {{name: every, exchange: {EX}, symbols: ['*'], timeframe: {TF}, "
                        "frequency: every_time, cooldown: 5m, condition: {op: above, right: 10}}\n")
        app = AlertEngineApp(Settings(rules_file=path, redis_url="redis://unused", partitions=8), client)
        p = Decimal(11)
        symbols = [f"S{i}/USDT" for i in range(40)]
        candles = [Candle(exchange=EX, symbol=s, timeframe=TF, ts=T0, open=p, high=p, low=p, close=p,
                          volume=Decimal(1), buy_volume=Decimal(1), sell_volume=Decimal(0)) for s in symbols]
        fires = app.routing.on_batch(candles)
        assert await app.publish(fires) == [1] * 40
        want = {s: zlib.crc32(f"{EX}|{s}".encode()) % 8 for s in symbols}
        assert len(set(want.values())) > 4  # the batch really spans partitions (and nodes)
        for part in range(8):
            got = [Alert.decode(f[b"d"]) for _, f in await client.xrange(streams.part_alerts(part))]
            assert sorted(a.symbol for a in got) == sorted(s for s in symbols if want[s] == part)
            for a in got:
                fp = next(f.fingerprint for f in fires if f.alert.id == a.id)
                assert await client.exists(streams.part_alert_fired(part, a.id))
                assert int(await client.get(streams.part_alert_cooldown(part, fp))) == T0 + TF_MS + 5 * TF_MS
                assert await client.hexists(streams.part_rule_state(part), fp)
        assert await app.publish(fires) == [0] * 40  # a replay
        assert await count_alerts(client, 8) == 40
        await app.commit.close()
    finally:
        await client.aclose()
