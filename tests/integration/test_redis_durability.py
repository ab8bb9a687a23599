"""redis_wait_replicas: what a commit counted as done is still there after the master is SIGKILLed and the Sentinel
promotes the replica (real master, replica and Sentinel: tests/support/redis_sentinel.py)."""

from __future__ import annotations

import asyncio

import pytest
from redis import exceptions as redis_errors

from shared import streams
from shared.config import ServiceSettings
from shared.durability import NotReplicatedError, Replication
from shared.errors import ConfigError
from shared.ownership import Ownership
from shared.redisconn import connect
from tests.support.redis_sentinel import RedisWithSentinel

GROUP = "durability-test"
RECORDS = streams.part_state(0, GROUP)  # a hash of "records", written by fenced commits as candle_builder's are


async def _commit(ownership: Ownership, i: int) -> None:
    await ownership.fenced(0, [("HSET", RECORDS, f"r{i}", i)])


async def _commit_until_acknowledged(ownership: Ownership, i: int, attempts: int = 50) -> None:
    """A commit while the replica is in step, done again while its WAIT times out (as the services' writers do: a
    loaded machine can keep an in-step replica from answering within 300 ms)."""
    for _ in range(attempts - 1):
        try:
            return await _commit(ownership, i)
        except NotReplicatedError:
            await asyncio.sleep(0.1)
    await _commit(ownership, i)


async def _recorded(port: int) -> set[int]:
    from redis.asyncio import Redis

    direct = Redis(port=port)
    try:
        return {int(v) for v in (await direct.hgetall(RECORDS)).values()}
    finally:
        await direct.aclose()


@pytest.fixture
def servers(tmp_path):
    s = RedisWithSentinel(tmp_path)
    s.start()
    yield s
    s.stop()


@pytest.mark.parametrize("replicas", [1, 0])
async def test_acknowledged_commits_survive_a_master_crash_while_the_replica_lags(servers, replicas) -> None:
    """20 commits, then replication cut (the replica falls behind), 10 more, then SIGKILL of the master. With
    redis_wait_replicas: 1 the 10 are not acknowledged (NotReplicatedError) and every acknowledged commit is on the
    promoted replica; with 0 (the control: what the test catches) the 10 are acknowledged and lost."""
    client = connect(servers.url)
    ownership = Ownership(client, GROUP, "writer", 1, ttl_ms=60_000, replication=Replication(replicas, 300))
    acked: list[int] = []
    refused: list[int] = []
    try:
        assert await ownership.acquire(0)
        for i in range(20):
            await _commit_until_acknowledged(ownership, i)
            acked.append(i)
        # the replica holds the 20 before the cut, whatever the setting (on a loaded machine its first sync can still
        # be running: the control then lost the 20 as well)
        assert await client.wait(1, 10_000) >= 1
        servers.cut_replica()
        for i in range(20, 30):
            try:
                await _commit(ownership, i)
                acked.append(i)
            except NotReplicatedError:
                refused.append(i)
        new_master = await asyncio.to_thread(servers.kill_master)
        on_new_master = await _recorded(new_master)
    finally:
        await client.aclose()
    lost = sorted(set(acked) - on_new_master)
    if replicas:
        assert refused == list(range(20, 30)) and acked == list(range(20))
        assert lost == []
    else:  # without WAIT the master acknowledged what the replica never got: the crash loses exactly that
        assert refused == [] and lost == list(range(20, 30))


async def _registered(port: int) -> set[bytes]:
    from redis.asyncio import Redis

    direct = Redis(port=port)
    try:
        return set(await direct.smembers(streams.FEED_REGISTRY))
    finally:
        await direct.aclose()


@pytest.mark.parametrize("replicas", [1, 0])
async def test_a_feed_registration_survives_a_master_crash_while_the_replica_lags(servers, replicas) -> None:
    """market_feed registers its pairs once, before it publishes; a registration lost in a failover stays lost
    (candle_builder then builds the pair without the timeframes subscribers asked for: the HA pipeline run lost every
    1s candle of BTC/USDT so). Replication cut, ``register_feeds``, master SIGKILLed: with redis_wait_replicas 1 the
    registration is refused (the feed does it again: below, once the old master is back as a replica, and then it
    survives the next crash too); with 0 it was acknowledged, and the crash lost it."""
    from services.market_feed.publisher import register_feeds

    member = streams.registry_member("binance", "BTC/USDT").encode()
    client = connect(servers.url)
    try:
        servers.cut_replica()
        old = servers.name_of(servers.master_port())
        if replicas:
            with pytest.raises(NotReplicatedError):
                await register_feeds(client, "binance", ["BTC/USDT"], Replication(1, 300))
        else:
            await register_feeds(client, "binance", ["BTC/USDT"], Replication(0, 300))
    finally:
        await client.aclose()
    new_master = await asyncio.to_thread(servers.kill_master)
    assert member not in await _registered(new_master)  # the replica never got it
    if not replicas:
        return  # acknowledged and lost: what WAIT is there to prevent
    await asyncio.to_thread(servers.restart_as_replica, old)
    client = connect(servers.url)
    try:
        await register_feeds(client, "binance", ["BTC/USDT"], Replication(1, 5000))
    finally:
        await client.aclose()
    assert member in await _registered(await asyncio.to_thread(servers.kill_master))


async def test_concurrent_commits_acknowledged_before_the_kill_are_on_the_new_master(servers) -> None:
    """Four writers commit as fast as they can through the Sentinel client with redis_wait_replicas: 1; the master
    is SIGKILLed mid-stream. Every commit a writer saw acknowledged is on the promoted replica."""
    client = connect(servers.url)
    ownership = Ownership(client, GROUP, "writer", 1, ttl_ms=60_000, replication=Replication(1, 1000))
    acked: list[int] = []
    stop = asyncio.Event()

    async def writer(k: int) -> None:
        i = k
        while not stop.is_set():
            try:
                await _commit(ownership, i)
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
                return  # (the master is gone: what was acknowledged so far is what counts)
            acked.append(i)
            i += 4

    try:
        assert await ownership.acquire(0)
        tasks = [asyncio.create_task(writer(k)) for k in range(4)]
        while len(acked) < 300:
            await asyncio.sleep(0.01)
        new_master = await asyncio.to_thread(servers.kill_master)
        stop.set()
        await asyncio.gather(*tasks)
        on_new_master = await _recorded(new_master)
    finally:
        await client.aclose()
    assert len(acked) >= 300
    assert sorted(set(acked) - on_new_master) == []


async def test_without_replicas_asked_no_wait_is_issued(redis) -> None:
    """redis_wait_replicas: 0 (the default) costs nothing: no WAIT, no mark written (a lone server has no replica:
    a WAIT 1 there would answer 0 and refuse every commit)."""
    await Replication(0, 100).wait(redis)
    assert await redis.exists(streams.REPLICATION_MARK) == 0
    with pytest.raises(NotReplicatedError, match="0 of 1 replica"):
        await Replication(1, 50).wait(redis)


def test_the_setting_is_read_and_refused_on_a_cluster_or_the_embedded_redis(monkeypatch) -> None:
    monkeypatch.setenv("SENTINEL_REDIS_WAIT_REPLICAS", "1")
    monkeypatch.setenv("SENTINEL_REDIS_WAIT_MS", "250")
    with pytest.raises(ConfigError, match="the embedded Redis .* has no replica"):
        ServiceSettings.load()
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://127.0.0.1:26379/main/0")
    assert ServiceSettings.load().durability == Replication(1, 250)
    monkeypatch.setenv("SENTINEL_REDIS_CLUSTER", "true")
    with pytest.raises(ConfigError, match="redis_wait_replicas: not supported with redis_cluster"):
        ServiceSettings.load()


def test_the_ha_compose_file_points_every_service_at_the_sentinels_with_wait() -> None:
    """docker-compose.ha.yml (README, Docker): a replica of `redis`, three Sentinels monitoring it under the master
    name the services' URL names, and every sentinel service of docker-compose.yml on that URL with WAIT 1."""
    import re

    import yaml

    from shared.redisconn import parse_sentinel_url
    from tests.conftest import REPO

    base = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    ha = yaml.safe_load((REPO / "docker-compose.ha.yml").read_text())["services"]
    ours = {name for name, svc in base.items() if svc.get("command", [""])[0] in (
        "market-feed", "candle-builder", "alert-engine", "notifier", "api")}
    assert ours == {"market_feed", "candle_builder", "alert_engine", "notifier", "api"}
    sentinels = sorted(name for name in ha if name.startswith("redis-sentinel-"))
    assert len(sentinels) == 3
    assert ha["redis-replica"]["command"][:4] == ["redis-server", "--replicaof", "redis", "6379"]
    for name in ours:
        env = ha[name]["environment"]
        hosts, master, db, _ = parse_sentinel_url(env["REDIS_URL"])
        assert sorted(h for h, _ in hosts) == sentinels and {p for _, p in hosts} == {26379} and db == 0
        assert env["SENTINEL_REDIS_WAIT_REPLICAS"].endswith(":-1}") and int(env["SENTINEL_REDIS_WAIT_MS"]) > 0
    script = ha[sentinels[0]]["command"][-1]
    assert re.search(rf"sentinel monitor {master} redis 6379 2\\n", script), script


# ---- every service's "done" commit goes through Replication.wait with its settings ------------------------------


@pytest.fixture
def waits(monkeypatch) -> list[int]:
    """Replication.wait recorded instead of issued (a lone test server has no replica): the replicas each call asked
    for. Guards the one-line hooks in the services (docs/architecture.md, Durability) against rewrites."""
    calls: list[int] = []

    async def recorded(self: Replication, redis) -> None:
        calls.append(self.replicas)

    monkeypatch.setattr(Replication, "wait", recorded)
    return calls


async def test_market_feed_waits_after_its_publish_script(redis, waits) -> None:
    from services.market_feed.app import MarketFeedApp
    from services.market_feed.settings import Settings
    from tests.conftest import shared_data

    path = shared_data("binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv")
    app = MarketFeedApp(Settings(mode="replay", replay_file=path, batch_size=100, redis_wait_replicas=1,
                                 redis_url="redis://unused"), redis)
    await asyncio.wait_for(app.run(asyncio.Event()), timeout=60)
    assert app.done and app.trades_published > 0
    assert waits and set(waits) == {1}


async def test_candle_builder_waits_after_its_fenced_commit(redis, redis_url, waits) -> None:
    from tests.conftest import shared_data
    from tests.support.candles import RECORDINGS, publish, read_candles, read_trades, run_until_caught_up
    from tests.support.candles import settings_for

    exchange, symbol, rel = RECORDINGS["btcusdt"]
    await publish(redis, exchange, symbol, read_trades(shared_data(rel))[:2000], per_entry=100)
    await run_until_caught_up(redis, settings_for(redis_url, redis_wait_replicas=1))
    assert await read_candles(redis, exchange, symbol, "1m")
    assert waits and set(waits) == {1}


async def test_alert_engine_waits_after_its_commit_script(redis, tmp_path, waits) -> None:
    from decimal import Decimal

    from services.alert_engine.app import AlertEngineApp
    from services.alert_engine.settings import Settings
    from shared.schemas import Candle
    from tests.support.alerts import count_alerts
    from tests.support.engine_candles import publish_candles

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: above, exchange: binance, symbols: [XRP/ETH], timeframe: 1m, "
                     "frequency: every_time, condition: {op: above, right: 10}}\n")
    candles = [Candle(exchange="binance", symbol="XRP/ETH", timeframe="1m", ts=1_570_752_000_000 + i * 60_000,
                      open=Decimal(c), high=Decimal(c), low=Decimal(c), close=Decimal(c), volume=Decimal(1),
                      buy_volume=Decimal(1), sell_volume=Decimal(0)) for i, c in enumerate([5, 11, 12, 9, 13])]
    await publish_candles(redis, candles)
    app = AlertEngineApp(Settings(rules_file=rules, consumer_name="e", warmup_bars=2, block_ms=50,
                                  redis_url="redis://unused", redis_wait_replicas=1), redis)
    await app.drain()
    assert await count_alerts(redis) > 0
    assert waits and set(waits) == {1}


async def test_notifier_waits_after_its_sent_records(redis, tmp_path, waits) -> None:
    from services.notifier.app import NotifierApp
    from services.notifier.settings import Settings
    from tests.integration.notifier.helpers import make_alert, publish, run_until_caught_up

    alerts = [make_alert(i) for i in range(5)]
    await publish(redis, alerts, 1)
    app = NotifierApp(Settings(jsonl_path=tmp_path / "alerts.jsonl", console=False, consumer_name="n1", block_ms=50,
                               partitions=1, redis_wait_replicas=1, redis_url="redis://unused"), redis)
    await run_until_caught_up(app, redis)
    assert await redis.get(streams.notify_sent(alerts[0].id, "jsonl")) == b"done"
    assert waits and set(waits) == {1}


def test_demo_and_backtest_run_their_own_redis_without_waiting_for_replicas(tmp_path) -> None:
    """A settings file made for the HA deployment (redis_wait_replicas: 1) used by `sentinel demo` or `sentinel
    backtest`: they run their own Redis, which has no replica, so they ask for none (else nothing would ever count as
    done and they would wait forever)."""
    from sentinel.backtest.inputs import Input
    from sentinel.backtest.run import BacktestOptions
    from sentinel.backtest.run import _settings as backtest_settings
    from sentinel.run import RunOptions, _service_settings

    config = tmp_path / "sentinel.yaml"
    config.write_text("redis_url: redis+sentinel://10.0.0.5:26379/main/0\nredis_wait_replicas: 1\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    assert ServiceSettings.load(config).redis_wait_replicas == 1
    demo = _service_settings(RunOptions(config_file=config), "redis://127.0.0.1:1/0", tmp_path)
    item = Input(tmp_path / "t.csv", "binance", "BTC/USDT", 1, frozenset({("binance", "BTC/USDT")}))
    backtest = backtest_settings(BacktestOptions([item.path], rules, tmp_path / "out", config_file=config), [item],
                                 "redis://127.0.0.1:1/0", tmp_path)
    assert demo and backtest
    assert {s.redis_wait_replicas for s in [*demo.values(), *backtest.values()] if hasattr(s, "redis_wait_replicas")} \
        == {0}
