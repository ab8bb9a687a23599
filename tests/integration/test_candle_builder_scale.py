"""Two candle_builder instances split the pairs with leases; one is killed with SIGKILL mid-stream, the other takes
its pairs over within seconds, and every closed candle still equals pandas' (nothing lost, nothing counted twice)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import yaml

from services.candle_builder.app import CandleBuilderApp
from shared import streams
from shared.bus import Bus
from shared.schemas import Watermark, encode_trades, encode_watermark
from tests.conftest import REPO, shared_data
from tests.support.candles import (
    RECORDINGS,
    TIMEFRAMES,
    check_against_pandas,
    read_candles,
    read_trades,
    run_until_caught_up,
    settings_for,
)

KNOBS = {"leases": True, "lease_ttl_ms": 1500, "timeframes": TIMEFRAMES, "block_ms": 50, "discover_every_s": 0.2,
         "claim_idle_ms": 500, "read_count": 10, "live_candles": False}


async def _owners(redis, pairs) -> list[bytes | None]:
    return [await redis.get(streams.builder_lease(*p)) for p in pairs]


async def test_a_killed_instance_is_taken_over_without_loss_or_double_count(redis, redis_url, tmp_path):
    names = sorted(RECORDINGS)
    data = {n: read_trades(shared_data(RECORDINGS[n][2])) for n in names}
    pairs = [(RECORDINGS[n][0], RECORDINGS[n][1]) for n in names]
    bus = Bus(redis)
    entries: dict[str, list[bytes]] = {}
    for n, (exchange, symbol) in zip(names, pairs):
        await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(exchange, symbol))
        trades = data[n]
        entries[n] = [encode_trades(exchange, symbol, trades[i:i + 20]) for i in range(0, len(trades), 20)]
        entries[n].append(encode_watermark(Watermark(exchange, symbol, trades[-1].ts, final=True)))
    first_part = {n: len(e) // 3 for n, e in entries.items()}
    for n, (exchange, symbol) in zip(names, pairs):
        await bus.publish_many((streams.trades(exchange, symbol), d) for d in entries[n][:first_part[n]])

    config = tmp_path / "sentinel.yaml"
    config.write_text(yaml.safe_dump({"redis_url": redis_url, "consumer_name": "builder-b", "log_level": "WARNING",
                                      "candle_builder": KNOBS}))
    other = subprocess.Popen([sys.executable, "-c", "import sys; from services.candle_builder.__main__ import main; "
                              "main(sys.argv[1])", str(config)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    app = CandleBuilderApp(settings_for(redis_url, consumer_name="builder-a", **{
        k: v for k, v in KNOBS.items() if k not in ("timeframes",)}), redis)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        # Both instances hold pairs: the work is split.
        deadline = time.monotonic() + 20
        while set(await _owners(redis, pairs)) != {b"builder-a", b"builder-b"}:
            assert time.monotonic() < deadline, f"pairs not split: {await _owners(redis, pairs)}"
            await asyncio.sleep(0.05)
        # Feed the rest slowly; kill -9 the other instance in the middle of it.
        remaining = {n: entries[n][first_part[n]:] for n in names}
        killed_at = None
        for step in range(30):
            for n, (exchange, symbol) in zip(names, pairs):
                chunk = remaining[n][step * len(remaining[n]) // 30:(step + 1) * len(remaining[n]) // 30]
                if chunk:
                    await bus.publish_many((streams.trades(exchange, symbol), d) for d in chunk)
            if step == 8:
                # Kill it only once it has really built candles (saved state) for a pair it owns.
                deadline = time.monotonic() + 10
                while not any([owner == b"builder-b" and await redis.hget(streams.builder_state(*p), "last_id")
                               for p, owner in zip(pairs, await _owners(redis, pairs))]):
                    assert time.monotonic() < deadline, "the other instance never processed anything"
                    await asyncio.sleep(0.02)
                other.send_signal(signal.SIGKILL)
                other.wait()
                killed_at = time.monotonic()
            await asyncio.sleep(0.05)
        # The survivor owns everything within a few seconds of the kill.
        while set(await _owners(redis, pairs)) != {b"builder-a"}:
            assert time.monotonic() - killed_at < 6, f"no takeover: {await _owners(redis, pairs)}"
            await asyncio.sleep(0.05)
        takeover_s = time.monotonic() - killed_at
        assert takeover_s < 6
        # Then it catches up, claiming what the dead one left pending.
        deadline = time.monotonic() + 60
        while not all([await bus.caught_up(streams.trades(*p), streams.GROUP_CANDLE_BUILDER) for p in pairs]):
            assert time.monotonic() < deadline, app.status()
            await asyncio.sleep(0.05)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        stop.set()
        await asyncio.wait_for(task, 10)
    for n, (exchange, symbol) in zip(names, pairs):
        for tf in TIMEFRAMES:
            check_against_pandas(await read_candles(redis, exchange, symbol, tf), shared_data(RECORDINGS[n][2]), tf)


async def test_kill_9_and_restart_resume_exactly(redis, redis_url, tmp_path):
    """A lone builder process is SIGKILLed three times while trades stream in; restarts resume exactly."""
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    path = shared_data(rel)
    trades = read_trades(path)
    stream = streams.trades(exchange, symbol)
    bus = Bus(redis)
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(exchange, symbol))
    entries = [encode_trades(exchange, symbol, trades[i:i + 7]) for i in range(0, len(trades), 7)]
    entries.append(encode_watermark(Watermark(exchange, symbol, trades[-1].ts, final=True)))
    config = tmp_path / "sentinel.yaml"
    config.write_text(yaml.safe_dump({"redis_url": redis_url, "log_level": "WARNING", "candle_builder": {
        "timeframes": TIMEFRAMES, "block_ms": 20, "discover_every_s": 0.1, "read_count": 5}}))
    published = 0
    for kill in range(3):
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from services.candle_builder.__main__ import main;"
                                 " main(sys.argv[1])", str(config)], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            before = await redis.hget(streams.builder_state(exchange, symbol), "last_id")
            # publish a slice and kill the builder while it is working through it
            part = entries[published:published + len(entries) // 4]
            published += len(part)
            await bus.publish_many((stream, d) for d in part)
            deadline = time.monotonic() + 20
            while await redis.hget(streams.builder_state(exchange, symbol), "last_id") == before:
                assert time.monotonic() < deadline, "the builder process made no progress"
                await asyncio.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    await bus.publish_many((stream, d) for d in entries[published:])
    await run_until_caught_up(redis, settings_for(redis_url), [stream])  # a restart in process finishes the job
    for tf in TIMEFRAMES:
        check_against_pandas(await read_candles(redis, exchange, symbol, tf), path, tf)

