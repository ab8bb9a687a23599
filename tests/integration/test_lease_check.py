"""The one lease check (``shared.ownership.LEASE_CHECK``) in alert_engine's commit and market_feed's publish, on a
real redis-server and a 3-node Redis Cluster (the fence counter is a key of the script: one slot).

Through their public entry points (``AlertCommit.publish`` with an owner, ``Outbox.flush``): a lease that expired
while nobody took the partition is taken back by the write and extended by the TTL (before, the plain ``GET lease``
checks answered FENCED and the worker stopped for nothing); a lease another replica took (the fence counter INCRed)
fences the write, and nothing of it lands, even once that replica's lease expired in turn."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from services.market_feed.publisher import Outbox
from shared import streams
from shared.bus import FIELD
from shared.feed_codec import decode_feed
from shared.ownership import FencedError, Ownership
from shared.partitions import partition_of
from shared.schemas import Alert, Candle, Trade, TradeBatch

PARTITIONS = 8
TTL_MS = 60_000  # long: an expiry is made on purpose (PEXPIRE), and the extension is told from what is left
EX, TF, T0 = "binance", "1m", 1_570_752_000_000


async def _expire(redis, key: str) -> None:
    """Let the lease expire untouched (as it would under an owner too busy to renew it), and wait until it has."""
    await redis.pexpire(key, 1)
    while await redis.exists(key):
        await asyncio.sleep(0.01)


# ---- alert_engine -------------------------------------------------------------------------------------------------

def _engine(redis, tmp_path, name: str) -> AlertEngineApp:
    path = tmp_path / "rules.yaml"
    path.write_text(f"rules:\n  - {{name: above, exchange: {EX}, symbols: ['*'], timeframe: {TF}, "
                    "frequency: every_time, condition: {op: above, right: 10}}\n")
    settings = Settings(rules_file=path, consumer_name=name, redis_url="redis://unused", partitions=PARTITIONS,
                        lease_ttl_ms=TTL_MS)
    return AlertEngineApp(settings, redis)


def _candle(symbol: str, i: int) -> Candle:
    p = Decimal(11)
    return Candle(exchange=EX, symbol=symbol, timeframe=TF, ts=T0 + i * 60_000, open=p, high=p, low=p, close=p,
                  volume=Decimal(1), buy_volume=Decimal(1), sell_volume=Decimal(0))


async def test_engine_commit_takes_back_a_lease_that_expired_untaken_and_is_fenced_once_it_was_taken(
        client, tmp_path) -> None:
    symbol = "BTC/USDT"
    p = partition_of(EX, symbol, PARTITIONS)
    lease, alerts, state = (streams.lease(streams.GROUP_ALERT_ENGINE, p), streams.part_alerts(p),
                            streams.part_state(p, streams.GROUP_ALERT_ENGINE))
    a = _engine(client, tmp_path, "a")
    assert await a.ownership.acquire(p)
    mine = a.ownership.leases[p]

    async def commit(app: AlertEngineApp, i: int) -> list[int]:
        fires = app.routing.on_batch([_candle(symbol, i)])
        assert [f.alert.ts for f in fires] == [T0 + i * 60_000]  # (the rule fires on the bar: the test's premise)
        return await app.commit.publish(fires, owner=app.ownership, partition=p, offsets={"in": f"{i}-0".encode()})

    assert await commit(a, 0) == [1]
    # (a) the owner was too busy to renew: its lease expired, nobody took the partition. The commit passes, takes
    # the lease back (same value, same token) and sets it for a whole TTL again.
    await _expire(client, lease)
    assert await commit(a, 1) == [1]
    assert await client.get(lease) == mine.value.encode()
    assert TTL_MS - 10_000 < await client.pttl(lease) <= TTL_MS
    assert p in a.ownership.owned
    got = [Alert.decode(f[b"d"]) for _, f in await client.xrange(alerts)]
    assert [x.ts for x in got] == [T0, T0 + 60_000] and {x.symbol for x in got} == {symbol}
    assert await client.hget(state, streams.offset_field("in")) == b"1-0"

    # (b) a's lease expired and replica b took the partition (INCR of the fence): a's commit writes nothing
    await _expire(client, lease)
    b = _engine(client, tmp_path, "b")
    assert await b.ownership.acquire(p)
    with pytest.raises(FencedError):
        await commit(a, 2)
    assert p not in a.ownership.owned
    assert await client.xlen(alerts) == 2
    assert await client.hget(state, streams.offset_field("in")) == b"1-0"
    assert await client.get(lease) == b.ownership.leases[p].value.encode()

    # b's lease expired untaken in turn: the old token still fails (b's is the last one given), b's passes
    await _expire(client, lease)
    a.ownership.leases[p] = mine  # (as if a had not seen its loss yet)
    with pytest.raises(FencedError):
        await commit(a, 3)
    assert await client.xlen(alerts) == 2 and await client.get(lease) is None
    assert await commit(b, 2) == [1]
    assert [Alert.decode(f[b"d"]).ts for _, f in await client.xrange(alerts)] == [T0 + i * 60_000 for i in range(3)]
    assert await client.hget(state, streams.offset_field("in")) == b"2-0"
    for app in (a, b):
        await app.commit.close()


async def test_engine_commit_without_an_owner_is_not_fenced(client, tmp_path) -> None:
    """Tools and tests commit outside a worker ('' = no fence): no lease needed, none written."""
    app = _engine(client, tmp_path, "tool")
    p = partition_of(EX, "ETH/USDT", PARTITIONS)
    assert await app.commit.publish(app.routing.on_batch([_candle("ETH/USDT", 0)])) == [1]
    assert await client.xlen(streams.part_alerts(p)) == 1
    assert await client.get(streams.lease(streams.GROUP_ALERT_ENGINE, p)) is None
    await app.commit.close()


# ---- market_feed --------------------------------------------------------------------------------------------------

def _trades(first: int, n: int) -> TradeBatch:
    return TradeBatch(EX, "BTC/USDT", [Trade(i, T0 + i, Decimal("100.5") + i, Decimal("0.25"), i % 2 == 0)
                                       for i in range(first, first + n)])


async def test_feed_publish_takes_back_a_lease_that_expired_untaken_and_is_fenced_once_it_was_taken(client) -> None:
    group, symbol = streams.feed_group(EX), "BTC/USDT"
    p = partition_of(EX, symbol, PARTITIONS)
    lease, trades, state = streams.lease(group, p), streams.part_trades(p), streams.part_state(p, group)
    a = Ownership(client, group, "a", PARTITIONS, ttl_ms=TTL_MS)
    assert await a.acquire(p)
    mine = a.leases[p]
    outbox = Outbox(client, a, EX, [symbol], maxlen=10_000, pipeline_entries=100, writer="source")

    async def published() -> list[int | str | None]:
        out: list[int | str | None] = []
        for _, fields in await client.xrange(trades):
            batch = decode_feed(fields[FIELD])
            assert isinstance(batch, TradeBatch)
            out += [t[0] for t in batch.trades]
        return out

    outbox.add(_trades(0, 3))
    await outbox.flush()
    # (a) expired untaken: the write passes, takes the lease back and extends it
    await _expire(client, lease)
    outbox.add(_trades(3, 3))
    await outbox.flush()
    assert await client.get(lease) == mine.value.encode()
    assert TTL_MS - 10_000 < await client.pttl(lease) <= TTL_MS
    assert p in a.owned
    assert await published() == list(range(6))
    assert await client.hget(state, f"last_id:{symbol}") == b"5"

    # (b) taken by replica b: FencedError, the write is dropped, nothing of it lands
    await _expire(client, lease)
    b = Ownership(client, group, "b", PARTITIONS, ttl_ms=TTL_MS)
    assert await b.acquire(p)
    outbox.add(_trades(6, 3))
    with pytest.raises(FencedError):
        await outbox.flush()
    assert p not in a.owned and outbox.pending == 0
    assert await published() == list(range(6))
    assert await client.hget(state, f"last_id:{symbol}") == b"5"
    assert await client.get(lease) == b.leases[p].value.encode()

    # b's lease expired untaken in turn: a's old token still fails; b's outbox publishes
    await _expire(client, lease)
    a.leases[p] = mine  # (as if a had not seen its loss yet)
    outbox.add(_trades(6, 3))
    with pytest.raises(FencedError):
        await outbox.flush()
    assert await published() == list(range(6)) and await client.get(lease) is None
    other = Outbox(client, b, EX, [symbol], maxlen=10_000, pipeline_entries=100, writer="source")
    other.add(_trades(6, 3))
    await other.flush()
    assert await published() == list(range(9))
    assert await client.hget(state, f"last_id:{symbol}") == b"8"
