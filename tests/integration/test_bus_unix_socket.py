"""A REDIS_URL of a Unix socket (``unix:///path``): the client, the bus's packed pipelines and a prefetching consumer
on redis-py's Unix-socket connections, against a real redis-server listening on a socket only."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from shared import streams
from shared.bus import Batch, Bus, Consumer, ConsumerSettings
from shared.embedded_redis import find_redis_server
from shared.feed_codec import decode_feed, encode_trades
from shared.runtime import connect
from shared.schemas import TradeBatch


@pytest.fixture
def unix_url(tmp_path: Path):
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen([find_redis_server(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_bus_publishes_and_a_consumer_reads_over_a_unix_socket(unix_url):
    redis = connect(unix_url)
    bus = Bus(redis)
    stream = streams.part_trades(0)
    await bus.publish_many((stream, encode_trades("test", "BTC/USDT", [(i, 1000 + i, "1.5", "2", True)]))
                           for i in range(30))
    seen: list[int] = []

    async def handle(batch: Batch[TradeBatch]) -> None:
        async with bus.pipeline(transaction=True) as tx:
            for entry in batch.entries:
                seen.extend(t.id for t in entry.value.trades)
                tx.hset("seen", str(entry.value.trades[0].id), 1)
            batch.ack_with(tx)
            await tx.execute()

    consumer = Consumer(bus, ConsumerSettings(group="g", consumer="c", count=4), decode=decode_feed, handler=handle,
                        streams=[stream])
    assert await consumer.drain() == 30
    assert seen == list(range(30))
    assert await redis.hlen("seen") == 30
    assert await bus.group_status(stream, "g") == {"pending": 0, "lag": 0, "length": 30}
    await redis.aclose()
