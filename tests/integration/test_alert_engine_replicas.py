"""alert_engine as 2 and 3 processes (``sentinel alert-engine``), one SIGKILLed mid-run, on one Redis and on a
3-master Redis Cluster: exactly the alerts (ids and every value) of one engine draining the same candles.

The candles are a real recording's (BTC/USDT 1s and 1m, ../shared/data) and two series made from it with shifted
values, on pairs of three different partitions; they are written as candle_builder writes them
(``part_candles`` + ``series_candles``, in close order), chunk by chunk while the engines run. The rules are the
28-rule correctness set (tests/integration/test_alert_engine_correctness.py) run on every pair, multi-symbol and
multi-timeframe rules among them (a rule of one partition reading a series of another). The reference is one
``AlertEngineApp`` draining the same candles in this process, computed first on the same server.

Before (one consumer group handing out entries): two engines each saw part of each series, and 42 % of the
indicator rules' alerts were wrong (issue 21).
"""

from __future__ import annotations

import asyncio
import signal

import pytest
import yaml
from redis.asyncio.cluster import RedisCluster

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from shared import streams
from shared.partitioned import caught_up
from shared.partitions import partition_of
from shared.runtime import connect
from shared.schemas import Candle
from tests.conftest import shared_data
from tests.integration import test_alert_engine_correctness as corr
from tests.support.alerts import read_alerts
from tests.support.chaos.processes import clean_env, sentinel_argv
from tests.support.engine_candles import publish_candles
from tests.unit.alert_engine import pdref

EX, A = corr.EX, corr.A
PARTITIONS = 16
CHUNKS = 24


def _third_pair() -> tuple[str, str]:
    """Two symbols whose partitions differ from A's and from each other's."""
    taken = {partition_of(EX, A, PARTITIONS)}
    out = []
    for n in range(100):
        sym = f"ALT{n}/USDT"
        p = partition_of(EX, sym, PARTITIONS)
        if p not in taken:
            taken.add(p)
            out.append(sym)
        if len(out) == 2:
            return out[0], out[1]
    raise AssertionError("no symbols in other partitions")


B, C = _third_pair()


def _shifted(candles: list[Candle], symbol: str, k: int) -> list[Candle]:
    """A series of ``symbol`` with the timestamps of ``candles`` and the values of the candle ``k`` further on."""
    fields = ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "trades")
    out = []
    for i, c in enumerate(candles):
        src = candles[(i + k) % len(candles)]
        out.append(c.model_copy(update={"symbol": symbol, **{f: getattr(src, f) for f in fields}}))
    return out


def _inputs() -> tuple[list[Candle], str]:
    path = shared_data(corr.BTC)
    c1 = pdref.candles_from_csv(path, EX, A, "1s", 1000)
    cm = pdref.candles_from_csv(path, EX, A, "1m", 60_000)
    text, _ = corr._rules(pdref.frame(c1))
    # every rule on the three pairs; the multi-symbol rules (reading BTCB/USDT) read C instead, of another partition
    text = text.replace(f"symbols: [{A}]", f"symbols: [{A}, {B}, {C}]").replace(corr.B, C)
    candles = c1 + cm + _shifted(c1, B, 7) + _shifted(cm, B, 1) + _shifted(c1, C, 31) + _shifted(cm, C, 2)
    return sorted(candles, key=lambda c: c.ts + (1000 if c.timeframe == "1s" else 60_000)), text


async def _reference(client, tmp_path, candles: list[Candle], rules) -> list[bytes]:
    await publish_candles(client, candles)
    await client.sadd(streams.FEED_REGISTRY, *(streams.registry_member(EX, s) for s in (A, B, C)))
    app = AlertEngineApp(Settings(rules_file=rules, consumer_name="reference", redis_url="redis://unused",
                                  clock="exchange", warmup_bars=2000, keep_bars=2000), client)
    await app.drain()
    alerts = await read_alerts(client, PARTITIONS)
    assert {a.symbol for a in alerts} == {A, B, C}, "the check would not cover every partition"
    assert {"sym_all", "sym_any", "mtf_all"} <= {a.rule for a in alerts}, "no multi-symbol/timeframe alert"
    return [a.encode() for a in alerts]


async def _owners(client) -> dict[int, str | None]:
    out: dict[int, str | None] = {}
    for p in range(PARTITIONS):
        value = await client.get(streams.lease(streams.GROUP_ALERT_ENGINE, p))
        out[p] = value.decode().rsplit("|", 1)[0] if value else None
    return out


async def _until_every_replica_holds_partitions(client, replicas: int) -> None:
    async with asyncio.timeout(60):
        while len({o for o in (await _owners(client)).values() if o}) < replicas:
            await asyncio.sleep(0.2)


async def _owner_after_progress(client, partition: int) -> int:
    """The replica number owning ``partition`` once it has committed an offset there."""
    field = streams.offset_field(streams.part_candles(partition))
    async with asyncio.timeout(60):
        while not await client.hget(streams.part_state(partition, streams.GROUP_ALERT_ENGINE), field):
            await asyncio.sleep(0.05)
    owner = (await _owners(client))[partition]
    assert owner is not None
    return int(owner.removeprefix("engine-"))


@pytest.mark.parametrize("replicas,where", [(2, "redis"), (3, "redis"), (2, "cluster"), (3, "cluster")])
async def test_engine_replicas_one_killed_give_the_alerts_of_one_engine(replicas, where, request, tmp_path):
    if where == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        client = RedisCluster.from_url(url)
    else:
        url = request.getfixturevalue("redis_url")
        client = connect(url)
    candles, text = _inputs()
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    procs: list[asyncio.subprocess.Process] = []
    try:
        await client.flushall()
        want = await _reference(client, tmp_path, candles, rules)
        assert len(want) > 200
        await client.flushall()
        await client.sadd(streams.FEED_REGISTRY, *(streams.registry_member(EX, s) for s in (A, B, C)))

        config = tmp_path / "sentinel.yaml"
        config.write_text(yaml.safe_dump({"redis_url": url, "alert_engine": {
            "rules_file": str(rules), "clock": "exchange", "warmup_bars": 2000, "keep_bars": 2000, "block_ms": 50,
            "registry_poll_s": 0.5, "reload_every_s": 0.5}}))
        env = {"SENTINEL_LEASE_TTL_MS": "4000", "SENTINEL_PARTITIONS": str(PARTITIONS)}
        if where == "cluster":
            env["SENTINEL_REDIS_CLUSTER"] = "true"
        for n in range(replicas):
            procs.append(await asyncio.create_subprocess_exec(
                *sentinel_argv("alert-engine", "--config", str(config)),
                env=clean_env({**env, "SENTINEL_CONSUMER_NAME": f"engine-{n}"}), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=open(tmp_path / f"engine-{n}.log", "wb")))
        await _until_every_replica_holds_partitions(client, replicas)
        size = -(-len(candles) // CHUNKS)
        killed = None
        for i in range(CHUNKS):
            await publish_candles(client, candles[i * size:(i + 1) * size])
            await asyncio.sleep(0.25)
            if i == CHUNKS // 2:  # mid-run: the owner of A's partition, once it committed some of it, dies
                killed = await _owner_after_progress(client, partition_of(EX, A, PARTITIONS))
                procs[killed].send_signal(signal.SIGKILL)
                await procs[killed].wait()
        assert killed is not None
        survivors = [p for n, p in enumerate(procs) if n != killed]
        async with asyncio.timeout(90):
            while not await caught_up(client, PARTITIONS, streams.GROUP_ALERT_ENGINE, streams.part_candles):
                await asyncio.sleep(0.2)
            seen = -1
            while (n := len(await read_alerts(client, PARTITIONS))) != seen:  # other partitions' series read too
                seen = n
                await asyncio.sleep(1.5)
        owners = await _owners(client)
        assert owners[partition_of(EX, A, PARTITIONS)] != f"engine-{killed}"  # taken over
        for proc in survivors:  # all at once: each evaluates its partitions' last waiting bars (clock exchange)
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in survivors)), 30)
        got = [a.encode() for a in await read_alerts(client, PARTITIONS)]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await client.aclose()
    logs = "\n".join((tmp_path / f"engine-{n}.log").read_text(errors="replace")[-2000:] for n in range(replicas))
    assert all(p.returncode == 0 for p in survivors), logs
    assert len(got) == len(set(got)), "an alert published twice"
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, (len(missing), len(extra), missing[:2], extra[:2], logs[-1500:])
