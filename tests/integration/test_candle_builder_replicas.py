"""Two candle_builder processes with default settings (``sentinel candle-builder``), real redis-server: they split the
partitions by lease; one is SIGKILLed while trades flow, the other takes its partitions over once the leases expire
(``lease_ttl_ms``, 6 s by default) and every candle of every pair still equals pandas, published once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from shared import streams
from shared.partitioned import read_offset
from shared.partitions import partition_of
from tests.conftest import shared_data
from tests.support.candles import (
    RECORDINGS,
    TIMEFRAMES,
    builder_caught_up,
    check_against_pandas,
    publish,
    read_candles,
    read_trades,
    run_until_caught_up,
    settings_for,
)
from tests.support.chaos.processes import Service, clean_env, sentinel_argv
from tests.support.chaos.progress import wait_for

GROUP = streams.GROUP_CANDLE_BUILDER
PAIRS = [RECORDINGS["btcusdt"], RECORDINGS["kraken"]]


async def holders(redis, partitions: list[int]) -> set[str]:
    """The instances holding the leases of ``partitions``."""
    values = [await redis.get(streams.lease(GROUP, p)) for p in partitions]
    return {v.decode().rsplit("|", 1)[0] for v in values if v is not None}


@dataclass
class Run:
    """Two builders started on the first half of every pair's trades, the partitions split between them."""

    trades: dict[tuple[str, str], list]
    partitions: list[int]  # the partitions of PAIRS
    builders: list[Service]
    victim: Service  # one holding a partition of PAIRS
    survivor: Service

    async def second_half(self, redis) -> None:
        """The rest of every pair's trades, in slices of 400 (20 per entry), the last entry marked final."""
        for (ex, sym), ts in self.trades.items():
            rest = ts[len(ts) // 2:]
            for i in range(0, len(rest), 400):
                await publish(redis, ex, sym, rest[i:i + 400], per_entry=20, final=i + 400 >= len(rest))
                await asyncio.sleep(0.02)


@asynccontextmanager
async def two_builders(redis, redis_url: str, tmp_path: Path, **settings: object) -> AsyncIterator[Run]:
    """``sentinel candle-builder`` twice (``settings`` beside ``redis_url``, every other setting default) after the
    first half of the trades; yields once both hold partitions (8 each), stops both on the way out, then checks every
    pair's candles of every timeframe against pandas."""
    config = tmp_path / "sentinel.yaml"
    config.write_text(yaml.safe_dump({"redis_url": redis_url, **settings}))
    trades = {(ex, sym): read_trades(shared_data(rel)) for ex, sym, rel in PAIRS}
    partitions = sorted({partition_of(ex, sym, 16) for ex, sym, _ in PAIRS})
    assert len(partitions) == 2
    for (ex, sym), ts in trades.items():  # the first half before the builders start
        await publish(redis, ex, sym, ts[:len(ts) // 2], per_entry=20, final=False)
    builders = [Service("candle_builder", name, sentinel_argv("candle-builder", "--config", str(config)),
                        clean_env({"SENTINEL_CONSUMER_NAME": name}), tmp_path / f"{name}.log") for name in ("b1", "b2")]
    try:
        for svc in builders:
            await svc.start()

        async def split() -> bool:
            owners = [await redis.get(streams.lease(GROUP, p)) for p in range(16)]
            names = {o.decode().split("|")[0] for o in owners if o is not None}
            return len(names) == 2 and all(owners)

        assert await wait_for(split, 60) is not None, "the two builders did not split the partitions"
        held = await holders(redis, partitions)
        victim = next(svc for svc in builders if svc.name in held)
        yield Run(trades, partitions, builders, victim, next(svc for svc in builders if svc is not victim))
    finally:
        for svc in builders:
            await svc.stop()
    for ex, sym, rel in PAIRS:
        for tf in TIMEFRAMES:
            check_against_pandas(await read_candles(redis, ex, sym, tf), shared_data(rel), tf)


async def test_a_builder_killed_mid_run_is_taken_over_and_candles_equal_pandas(redis, redis_url, tmp_path):
    async with two_builders(redis, redis_url, tmp_path) as run:  # candle_builder: every default
        flow = asyncio.create_task(run.second_half(redis))  # the rest flows in while the victim is killed
        await asyncio.sleep(0.3)
        assert await run.victim.kill()
        await flow
        assert await wait_for(lambda: builder_caught_up(redis), 60) is not None, "not caught up after the kill"
        assert await holders(redis, run.partitions) == {run.survivor.name}  # every partition of the victim moved
        assert run.survivor.running, run.survivor.log.read_text()[-2000:]


async def test_a_builder_paused_past_its_leases_is_fenced_and_candles_equal_pandas(redis, redis_url, tmp_path):
    """A builder SIGSTOPped past ``lease_ttl_ms`` while trades flow: the other takes its partitions over; resumed, the
    paused one cannot write there (its token is old: a fenced write no longer extends or takes back a lease someone
    else took), and every candle equals pandas, published once (the two share the partitions again afterwards)."""
    async with two_builders(redis, redis_url, tmp_path, lease_ttl_ms=1500) as run:
        victim, survivor = run.victim, run.survivor
        assert victim.proc is not None
        paused_at = len(victim.log.read_text())  # what it says from here on is about the pause
        victim.proc.send_signal(signal.SIGSTOP)
        try:
            await run.second_half(redis)  # the rest flows in while the victim is paused
            assert await wait_for(lambda: _held_by(redis, run.partitions, survivor.name), 30) is not None
        finally:
            victim.proc.send_signal(signal.SIGCONT)
        assert await wait_for(lambda: builder_caught_up(redis), 60) is not None, "not caught up after the pause"

        async def learnt() -> bool:  # it learnt its old leases were taken (a renewal refused, or a fenced write)
            after = victim.log.read_text()[paused_at:]
            return any(word in after for word in ("was lost", "FENCED", "does not own"))

        # (the resumed process' balance round comes within a second on a quiet box; a loaded CI machine may take longer)
        assert await wait_for(learnt, 30, every=0.2) is not None, victim.log.read_text()[-2000:]
        await asyncio.sleep(1.0)  # any late write of the resumed victim
        assert victim.running and survivor.running  # (the two may share the partitions again since: fair shares)


async def _held_by(redis, partitions: list[int], name: str) -> bool:
    """Whether ``name`` holds the lease of every one of ``partitions``. (Not ``holders() == {name}``: that is also true
    while the paused one's lease has expired and nobody took it yet; resumed then, it renews it, rightly, and never
    learns of a takeover that did not happen.)"""
    values = [await redis.get(streams.lease(GROUP, p)) for p in partitions]
    return all(v is not None and v.decode().rsplit("|", 1)[0] == name for v in values)


async def test_a_builder_killed_between_saves_loses_and_repeats_nothing(redis, redis_url, tmp_path):
    """One-trade entries that publish nothing (no in-progress candles; 1m bars over an hour of trades) leave a read's
    state and offset unsaved until a candle closes, an idle read or a second passes: a ``kill -9`` then loses that
    window, and the next builder reads it again from the saved offset. Every candle equals pandas, published once."""
    config = tmp_path / "sentinel.yaml"
    config.write_text(yaml.safe_dump({"redis_url": redis_url, "candle_builder": {"live_candles": False}}))
    ex, sym, rel = RECORDINGS["btcusdt"]
    trades = read_trades(shared_data(rel))
    partition = partition_of(ex, sym, 16)
    builder = Service("candle_builder", "b1", sentinel_argv("candle-builder", "--config", str(config)),
                      clean_env({"SENTINEL_CONSUMER_NAME": "b1"}), tmp_path / "b1.log")
    await builder.start()
    sent = 0

    async def paced() -> None:  # one trade per entry, ~5k a second: each read finds one or a few
        nonlocal sent
        while sent < len(trades):
            await publish(redis, ex, sym, trades[sent:sent + 1], per_entry=1, final=sent + 1 == len(trades))
            sent += 1
            if sent % 10 == 0:
                await asyncio.sleep(0.002)

    flow = asyncio.create_task(paced())
    try:
        saved = await wait_for(lambda: _saved(redis, partition), 30)
        assert saved is not None, builder.log.read_text()[-2000:]
        await asyncio.sleep(0.7)  # trades flow; the kill lands between two saves
        assert await builder.kill()
        killed_at = sent
    finally:
        await flow
        await builder.stop()
    assert 0 < killed_at < len(trades)
    await run_until_caught_up(redis, settings_for(redis_url, live_candles=False))
    for tf in TIMEFRAMES:
        check_against_pandas(await read_candles(redis, ex, sym, tf), shared_data(rel), tf)


async def _saved(redis, partition: int) -> bool:
    return await read_offset(redis, partition, GROUP, streams.part_trades(partition)) is not None
