"""alert_engine through Redis faults and kills (issue 19, what the chaos bench found): a batch whose commit failed
still fires every alert once Redis is back, an engine killed mid-batch and restarted fires them too, and a cooldown
in exchange time holds across a restart however long the engine was away.

Real redis-server; Redis goes away exactly at the commit through a TCP relay (tests/support/redis_proxy.py); the
alerts are compared with an independent pandas evaluation (``pdref``) of the same rules on the same candles.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
from pathlib import Path

import pandas as pd
import yaml

import services.alert_engine
from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from shared import streams
from shared.ownership import fenced_script
from shared.partitioned import caught_up
from shared.partitions import partition_of
from shared.runtime import connect
from tests.conftest import shared_data
from tests.integration import test_alert_engine_correctness as corr
from tests.support.chaos.processes import clean_env, sentinel_argv
from tests.support.redis_proxy import OutageProxy
from tests.unit.alert_engine import pdref

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
EX, SYM = "binance", "BTC/USDT"
PART = partition_of(EX, SYM, 16)
#: the fenced commit script's EVALSHA (the consumer runs a script of its own: not that one)
COMMIT = hashlib.sha1(fenced_script(Path(services.alert_engine.__file__).with_name("commit.lua").read_text(
    encoding="utf-8")).encode()).hexdigest().encode()


def _rules(lo: str, hi: str) -> str:
    return f"""
rules:
  - {{name: ema_up, symbols: [{SYM}], timeframe: 1s, condition: {{left: {{ema: 5}}, op: crosses_up, right: {{ema: 13}}}}}}
  - {{name: ema_down, symbols: [{SYM}], timeframe: 1s,
     condition: {{left: {{ema: 5}}, op: crosses_down, right: {{ema: 13}}}}}}
  - {{name: outside_cd, symbols: [{SYM}], timeframe: 1s, cooldown: 20s, notify_on_resolve: true,
     condition: {{op: outside_channel, lower: {lo}, upper: {hi}}}}}
"""


def _expected(df: pd.DataFrame, lo: str, hi: str) -> set[tuple]:
    x, ts = df["close"], df["ts"]
    close = ts + 1000
    fast, slow = pdref.ema(x, 5), pdref.ema(x, 13)
    outside = ~pdref.channel("inside_channel", x, float(lo), float(hi)).astype(bool)
    out: set[tuple] = set()
    for rule, cond, kw in (("ema_up", pdref.cross_up(fast, slow), {}), ("ema_down", pdref.cross_down(fast, slow), {}),
                           ("outside_cd", outside, dict(cooldown_ms=20_000, notify_on_resolve=True))):
        out |= {(rule, SYM, "1s", t, state)
                for t, state in pdref.fires(cond, ts, close, frequency="once_per_bar_close", **kw)}
    return out


async def _setup(redis, tmp_path) -> tuple[set[tuple], Settings]:
    candles = pdref.candles_from_csv(shared_data(BTC), EX, SYM, "1s", 1000)
    df = pdref.frame(candles)
    lo, hi = corr._q(df["close"].quantile(0.35)), corr._q(df["close"].quantile(0.65))
    (tmp_path / "rules.yaml").write_text(_rules(lo, hi))
    await corr._publish(redis, candles)
    settings = Settings(rules_file=tmp_path / "rules.yaml", redis_url="redis://unused", clock="exchange", batch=500,
                        consumer_name="engine-1")
    want = _expected(df, lo, hi)
    assert len(want) > 40
    return want, settings


async def _until_caught_up(redis, timeout: float = 60) -> None:
    """Until the engine's saved offsets reached every partition's last candle (committed with its alerts)."""
    async with asyncio.timeout(timeout):
        while not await caught_up(redis, 16, streams.GROUP_ALERT_ENGINE, streams.part_candles):
            await asyncio.sleep(0.05)


async def test_alerts_of_a_batch_whose_commit_failed_fire_once_redis_is_back(redis, redis_server, tmp_path):
    """Redis goes away at the first commit (500 candles evaluated, many alerts among them) and comes back: the
    consumer reads the batch again, and the engine, warmed up again from the committed candles, fires all of it."""
    want, settings = await _setup(redis, tmp_path)
    proxy = OutageProxy(redis_server.port, marker=COMMIT)
    client = connect(await proxy.start())
    app = AlertEngineApp(settings, client)
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        await asyncio.wait_for(proxy.went_down.wait(), 30)  # its first batch (500 candles) evaluated, not committed
        await asyncio.sleep(0.5)
        proxy.resume()
        await _until_caught_up(redis)
        stop.set()
        await asyncio.wait_for(task, 30)
    finally:
        await client.aclose()
        await proxy.close()
    assert await corr._alerts(redis) == want
    assert app.rewarmed >= 1


async def test_an_engine_killed_mid_batch_fires_the_batch_after_its_restart(redis, redis_server, tmp_path):
    """``sentinel alert-engine`` (its own process, reaching Redis through the relay) is SIGKILLed the moment it
    sends its first commit (500 candles evaluated, nothing committed); a new engine takes the partition over once
    the dead one's lease expired and reads the batch again from the saved offsets: every alert, once."""
    want, settings = await _setup(redis, tmp_path)
    proxy = OutageProxy(redis_server.port, marker=COMMIT)
    config = tmp_path / "sentinel.yaml"
    config.write_text(yaml.safe_dump({"redis_url": await proxy.start(), "alert_engine": {
        "rules_file": str(settings.rules_file), "clock": "exchange", "batch": 500}}))
    proc = await asyncio.create_subprocess_exec(
        *sentinel_argv("alert-engine", "--config", str(config)), env=clean_env({"SENTINEL_CONSUMER_NAME": "engine-1"}),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.wait_for(proxy.went_down.wait(), 60)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proxy.close()
    # nothing of the batch committed: no offset saved, no alert
    assert await redis.hget(streams.part_state(PART, streams.GROUP_ALERT_ENGINE),
                            streams.offset_field(streams.part_candles(PART))) is None
    assert await corr._alerts(redis) == set()
    stop = asyncio.Event()
    task = asyncio.create_task(AlertEngineApp(settings, redis).run(stop))
    await _until_caught_up(redis)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert await corr._alerts(redis) == want


async def test_a_cooldown_in_exchange_time_holds_across_a_restart_longer_than_it(redis, tmp_path):
    """A 2 s cooldown on 1s bars (exchange time): the engine fires bar 0 and stops; 2.3 s of wall time later a new
    engine reads bars 1-7. Bar 1 closes within the cooldown and must stay quiet although 2 s of wall time passed."""
    candles = pdref.candles_from_csv(shared_data(BTC), EX, SYM, "1s", 1000)[:8]
    (tmp_path / "rules.yaml").write_text(f"""
rules:
  - {{name: always, symbols: [{SYM}], timeframe: 1s, cooldown: 2s, condition: {{left: close, op: above, right: 0}}}}
""")
    settings = Settings(rules_file=tmp_path / "rules.yaml", redis_url="redis://unused", clock="exchange",
                        consumer_name="engine-1")
    await corr._publish(redis, candles[:1])
    await AlertEngineApp(settings, redis).drain()
    await asyncio.sleep(2.3)
    await corr._publish(redis, candles[1:])
    await AlertEngineApp(settings, redis).drain()
    df = pdref.frame(candles)
    want = {("always", SYM, "1s", t, state) for t, state in pdref.fires(
        pd.Series([True] * len(df)), df["ts"], df["ts"] + 1000, frequency="once_per_bar_close", cooldown_ms=2000)}
    assert len(want) == 4
    assert await corr._alerts(redis) == want


async def test_a_redis_outage_gives_one_warning_and_one_recovery_line(own_redis, tmp_path, caplog):
    """The engine (consumer, housekeeping every 50 ms, heartbeat) while its redis-server is stopped for 3 s and
    started again: one 'unreachable' line and one 'back' line, no error and no traceback."""
    redis = connect(own_redis.url)
    candles = pdref.candles_from_csv(shared_data(BTC), EX, SYM, "1s", 1000)[:50]
    await corr._publish(redis, candles)
    (tmp_path / "rules.yaml").write_text(f"""
rules:
  - {{name: up, symbols: [{SYM}], timeframe: 1s, condition: {{left: close, op: above, right: {{sma: 3}}}}}}
""")
    app = AlertEngineApp(Settings(rules_file=tmp_path / "rules.yaml", redis_url=own_redis.url, clock="exchange",
                                  consumer_name="engine-1", block_ms=50, reload_every_s=0.05, registry_poll_s=0.05),
                         redis)
    stop = asyncio.Event()
    caplog.set_level(logging.DEBUG)
    task = asyncio.create_task(app.run(stop))
    try:
        await _until_caught_up(redis)
        caplog.clear()
        own_redis.stop()
        await asyncio.sleep(3.0)
        own_redis.start()
        async with asyncio.timeout(20):
            while app.bus.outage.down or not app.bus.outage.outages:
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    mine = [r.getMessage() for r in records if r.getMessage().startswith("alert_engine: Redis")]
    assert len(mine) == 2 and "is unreachable" in mine[0] and "is back after" in mine[1], mine
    others = [r for r in records if r.levelno >= logging.ERROR or r.exc_info or not r.getMessage().startswith(
        "alert_engine: Redis")]
    assert not others, [(r.name, r.getMessage()) for r in others]


async def test_an_engine_whose_redis_goes_away_during_start_up_waits_for_it(own_redis, tmp_path, caplog):
    """Redis answered the start-up check, then went away before the engine read its rules and series (the chaos
    bench: 'error: Redis: Error 111 connecting', exit 1, twice): the engine waits, says so once, and once Redis is
    back fires what the candles call for."""
    redis = connect(own_redis.url)
    candles = pdref.candles_from_csv(shared_data(BTC), EX, SYM, "1s", 1000)[:50]
    await corr._publish(redis, candles)
    (tmp_path / "rules.yaml").write_text(f"""
rules:
  - {{name: always, symbols: [{SYM}], timeframe: 1s, cooldown: 10s, condition: {{left: close, op: above, right: 0}}}}
""")
    app = AlertEngineApp(Settings(rules_file=tmp_path / "rules.yaml", redis_url=own_redis.url, clock="exchange",
                                  consumer_name="engine-1", block_ms=50), redis)
    own_redis.stop()
    caplog.set_level(logging.WARNING)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await asyncio.sleep(1.5)
        assert not task.done(), task.exception() if task.done() else None
        own_redis.start()
        await _until_caught_up(redis, 30)
        got = await corr._alerts(redis)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)
        await redis.aclose()
    assert task.exception() is None
    df = pdref.frame(candles)
    want = {("always", SYM, "1s", t, state) for t, state in pdref.fires(
        pd.Series([True] * len(df)), df["ts"], df["ts"] + 1000, frequency="once_per_bar_close", cooldown_ms=10_000)}
    assert got == want and len(want) == 5
    mine = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert_engine: Redis")]
    assert len(mine) == 2 and "start-up" in mine[0] and "is back" in mine[1], mine
