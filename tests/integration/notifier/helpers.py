"""Helpers shared by the notifier integration tests: alerts, running the app until the group is caught up."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from shared import streams
from shared.alert_streams import alert_streams
from shared.bus import Bus
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from shared.schemas import Alert


def make_alert(i: int, **kw) -> Alert:
    fields = dict(id=f"a{i:04d}", rule=f"rule_{i % 3}", exchange="binance", symbol=f"S{i % 7}/USDT", timeframe="1m",
                  ts=1_700_000_000_000 + 60_000 * i, fired_at=1_700_000_060_000 + 60_000 * i,
                  price=Decimal("61837.63") + i, value=Decimal("0.5"), condition="price above 60000",
                  message=f"alert number {i}", severity=("info", "warning", "critical")[i % 3],
                  labels={"n": str(i)})
    fields.update(kw)
    return Alert(**fields)


def stream_of(alert: Alert, partitions: int = DEFAULT_PARTITIONS) -> str:
    """The alerts stream alert_engine writes ``alert`` to: its pair's partition's."""
    return streams.part_alerts(partition_of(alert.exchange, alert.symbol, partitions))


async def publish(redis, alerts, partitions: int = DEFAULT_PARTITIONS) -> None:
    """Write ``alerts`` where alert_engine would (``stream_of``), in order (one XADD each: on a Redis Cluster too)."""
    for a in alerts:
        await redis.xadd(stream_of(a, partitions), {streams.FIELD: a.encode()})


async def caught_up(redis, partitions: int = DEFAULT_PARTITIONS) -> bool:
    """The notifier group has been delivered and has acked every entry of every partition's alerts stream."""
    bus = Bus(redis)
    return all([await bus.caught_up(s, streams.GROUP_NOTIFIER) for s in alert_streams(partitions)])


async def run_until_caught_up(app, redis, timeout: float = 20.0) -> None:
    """Run ``app.run(stop)`` until the notifier group has acked every alert, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not await caught_up(redis, app.settings.partitions):
                if task.done():
                    task.result()
                    raise AssertionError("notifier stopped early")
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
