"""alert_engine wiring: read candles, tickers and trades; evaluate the rules (``core``); commit the alerts.

The path of a batch: the consumer (``shared.bus``) reads the streams ``SeriesSync`` chose and hands a batch to
``_handle`` → ``core.AlertEngine`` (closed candles, in-progress candles, tickers, trades) → ``Fire`` records →
``AlertCommit.publish``: one atomic script per partition gates each fire (alert id seen? cooldown?), publishes it
and writes the rule state rows; then the batch is acked. Around it: ``RuleSource`` (the rules file and the API's rules, re-read when they
change) and ``SeriesSync`` (which series the rules need, subscriptions, warm-up), run by ``_housekeeping``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgpack
from redis.asyncio import Redis

from services.alert_engine.commit import AlertCommit
from services.alert_engine.core import AlertEngine, Fire
from services.alert_engine.core.feeds import BookFigures
from services.alert_engine.rule_source import RuleSource
from services.alert_engine.series_sync import SeriesSync
from services.alert_engine.settings import Settings
from shared import metrics, streams
from shared.bus import Batch, Bus, Consumer
from shared.errors import DecodeError
from shared.outage import REDIS_DOWN, backoff_delay
from shared.rules import RuleSet
from shared.runtime import heartbeat, quiet_gc
from shared.schemas import (
    Candle,
    FundingRate,
    GapMarker,
    Liquidation,
    OpenInterest,
    Ticker,
    TradeBatch,
    Watermark,
    feed_from_msg,
    unpack,
    unpack_tuples,
)

logger = logging.getLogger(__name__)

Feed = BookFigures | FundingRate | OpenInterest | Liquidation
Input = Candle | Ticker | TradeBatch | GapMarker | Watermark | Feed
_FEEDS: dict[str, Any] = {"book": BookFigures, "funding": FundingRate, "open_interest": OpenInterest,
                          "liquidation": Liquidation}


_BOOK_KIND = msgpack.packb({"k": "book"})[1:]  # the map entry "k": "book", as every book entry carries it


def decode_input(raw: bytes) -> Input:
    """Decode an entry of a candle, live-candle, ticker, trades, book or futures stream."""
    if _BOOK_KIND in raw:  # a book snapshot (~2,000/s): its levels unpacked as tuples, which the GC costs far less
        msg = unpack_tuples(raw)
        if isinstance(msg, dict) and msg.get("k") == "book":
            return BookFigures.from_msg(msg)
    msg = unpack(raw)
    kind = msg.get("k") if isinstance(msg, dict) else None
    if kind == "ticker":
        return Ticker.from_msg(msg)
    if kind in _FEEDS:
        feed: Feed = _FEEDS[kind].from_msg(msg)
        return feed
    if kind == "candle":
        return Candle.from_msg(msg)
    if kind in ("trades", "gap", "watermark"):
        return feed_from_msg(msg)
    raise DecodeError(f"expected a candle, a ticker, trades, a book or futures data, got kind {kind!r}")


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class AlertEngineApp:
    """The alert engine service: ``await AlertEngineApp(settings, redis).run(stop)``."""

    def __init__(self, settings: Settings, redis: Redis, *, ruleset: RuleSet | None = None) -> None:
        """``ruleset``: rules given in code (tests); None reads ``settings.rules_file``."""
        self.settings = settings
        self.redis = redis
        self.rule_source = RuleSource(redis, settings.rules_file, ruleset)
        self.engine = AlertEngine(self.rule_source.ruleset, keep=settings.keep_bars,
                                  clock=wall_clock_ms if settings.clock == "wall" else None)
        self.bus = Bus(redis, settings.bus_settings(), service="alert_engine")
        # a stable name (settings.consumer_name, else alert_engine-<hostname>): a restarted engine re-reads its own
        # pending entries first, and its subscriptions are this instance's
        self.consumer: Consumer[Input] = Consumer(
            self.bus, settings.consumer_settings(streams.GROUP_ALERT_ENGINE, "alert_engine", count=settings.batch,
                                                 block_ms=settings.block_ms),
            decode=decode_input, handler=self._handle)
        self.series_sync = SeriesSync(settings, redis, self.engine, self.consumer)
        self.commit = AlertCommit(settings, redis, self.engine)
        # the engine took in input whose commit may not have happened (a batch or a flush that raised): its windows
        # and rule status may be ahead of Redis, so it is warmed up again (``_rewarm``) before the next batch
        self._ahead = False
        self.rewarmed = 0

    @property
    def ruleset(self) -> RuleSet:
        """The rules running: the file's merged with the API's (disabled ones included)."""
        return self.rule_source.ruleset

    @property
    def reload_error(self) -> str | None:
        return self.rule_source.reload_error

    def status(self) -> dict[str, Any]:
        c = self.commit
        return {"rules": len(self.engine.rules), "series": len(self.series_sync.subscriptions.subscribed),
                "published": c.published, "suppressed": c.suppressed, "duplicates": c.duplicates,
                "reload_error": self.reload_error or "", "deferred": self.engine.deferred}

    # ---- lifecycle --------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if not await self._start(stop):
            return
        tasks = [
            asyncio.create_task(self.consumer.run(stop), name="alert_engine-consume"),
            asyncio.create_task(self._housekeeping(stop), name="alert_engine-sync"),
            asyncio.create_task(heartbeat(self.redis, "alert_engine", stop, self.status, outage=self.bus.outage,
                                          beat=self.series_sync.subscriptions.refresh, instance=self.consumer.name),
                                name="alert_engine-hb"),
        ]
        try:
            await stop.wait()
            await asyncio.gather(*tasks)
            if self.settings.clock == "exchange":
                # a backtest ends when its input does: bars still waiting for another series are evaluated now.
                # Live, they are not (they were acked): a restart's warm-up finds them waiting again.
                await self._flush(None)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.series_sync.subscriptions.drop_all()
            await self.commit.close()

    async def _start(self, stop: asyncio.Event) -> bool:
        """The rules and the series before the first read. Redis going away meanwhile (it answered the service's
        start-up check a moment before) is waited for, told once, instead of ending the service; False if stopped."""
        attempt = 0
        while True:
            try:
                self.engine.set_rules(await self.rule_source.start())
                await self.series_sync.sync()
                self.bus.outage.ok()
                quiet_gc()  # start-up's objects out of the collector's sight: no ~60 ms pause behind an alert
                return True
            except REDIS_DOWN as exc:
                self.bus.outage.lost(exc, "start-up")
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff_delay(attempt, base=0.1, cap=5.0))
                if stop.is_set():
                    return False

    async def drain(self, *, final: bool = True) -> int:
        """Burst mode (tests, backtest): sync series once, then process everything available now.

        ``final``: what was read is all there is, so bars still waiting for another series (see
        ``AlertEngine.flush_deferred``) are evaluated with what that series has; False leaves them waiting for the
        next drain.
        """
        self.engine.set_rules(await self.rule_source.start())
        await self.series_sync.sync()
        n = await self.consumer.drain()
        if final:
            await self._flush(None)
        if self.engine.stale:  # backfilled candles read last: merged now rather than at the next evaluation
            self.engine.rewarm()
        await self.commit.close()
        return n

    async def reload_rules(self) -> bool:
        """Take the rules file's and the API's changes (a bad file keeps the rules running: ``reload_error``);
        True when the rule set changed (the series then follow it)."""
        ruleset = await self.rule_source.poll()
        if ruleset is None:
            return False
        self.engine.set_rules(ruleset)
        await self.series_sync.sync()
        return True

    async def sync_series(self) -> None:
        """Follow the symbols the registries list now (``SeriesSync.sync``)."""
        await self.series_sync.sync()

    async def publish(self, fires: list[Fire], batch: Batch[Any] | None = None) -> list[int]:
        """Commit ``fires`` (``AlertCommit.publish``); the answers: 1 published, 0 duplicate, -1 cooling down, -2 a
        resolve whose run published no firing alert."""
        return await self.commit.publish(fires, batch)

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        next_sync = next_reload = loop.time()
        while not stop.is_set():
            try:
                if loop.time() >= next_reload:
                    next_reload = loop.time() + s.reload_every_s
                    await self.reload_rules()
                    await self.commit.save_all_state()
                    self.bus.outage.ok()  # (said only after commands reached Redis: a round may send none)
                if loop.time() >= next_sync:
                    next_sync = loop.time() + s.registry_poll_s
                    await self.series_sync.sync()
                    self.bus.outage.ok()
                if self.engine.waiting and s.clock == "wall":  # no input came to end the wait
                    await self._flush(wall_clock_ms() - s.cross_series_wait_ms)
                if self.engine.stale:  # a backfill read while no new bar came: merged now, not at the next bar
                    self.engine.rewarm()
            except REDIS_DOWN as exc:  # told once per outage (the consumer tells when Redis is back)
                self.bus.outage.lost(exc, "housekeeping")
            except Exception:  # a bug: logged, and the next round retries
                logger.exception("alert_engine: housekeeping failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(s.reload_every_s, s.registry_poll_s,
                                                                max(0.05, s.cross_series_wait_ms / 2000)))

    async def _flush(self, waited_since: int | None) -> None:
        fires = self.engine.flush_deferred(waited_since)
        if fires:
            try:
                await self.commit.publish(fires)
            except BaseException:
                self._ahead = True  # (the released bars were acked: the warm-up finds them waiting again)
                raise

    async def _rewarm(self) -> None:
        """Forget what the engine took in and warm it up again from what Redis holds as processed, as a restart
        does. Entries of a batch whose commit failed are still pending and come again: evaluated on windows that
        already held them they would be taken for old bars, and their alerts never fired."""
        self.commit.forget()
        await self.series_sync.rewarm()
        self._ahead = False
        self.rewarmed += 1
        logger.info("alert_engine: warmed up again from the committed candles (a commit had failed)")

    # ---- the path of a batch ----------------------------------------------------------------------------------------

    async def _handle(self, batch: Batch[Input]) -> None:
        """A batch of candles, tickers and trades → the engine → the commit of its alerts, then the batch's XACKs."""
        if self._ahead:
            await self._rewarm()
        try:
            await self._evaluate_and_commit(batch)
        except BaseException:
            self._ahead = True
            raise

    async def _evaluate_and_commit(self, batch: Batch[Input]) -> None:
        engine = self.engine
        fires: list[Fire] = []
        market: list[Candle | Ticker] = []
        sync = self.series_sync
        ticker_pairs, tick_pairs, feed_pairs = sync.ticker_pairs, sync.tick_pairs, sync.feed_pairs
        live_series = sync.live_series
        for entry in batch.entries:
            value = entry.value
            if isinstance(value, Candle):  # in-progress ones: a partition's stream, only the series rules read live
                if value.closed or (value.exchange, value.symbol, value.timeframe) in live_series:
                    market.append(value)
            elif isinstance(value, Ticker):  # a partition's stream: only the pairs rules read
                if (value.exchange, value.symbol) in ticker_pairs:
                    market.append(value)
            elif isinstance(value, (BookFigures, FundingRate, OpenInterest, Liquidation)):  # a partition's stream: only the pairs book/futures rules read
                if (value.exchange, value.symbol) in feed_pairs:
                    fires += engine.on_feed(value)
            elif isinstance(value, TradeBatch) and (value.exchange, value.symbol) in tick_pairs:
                # tick-level rules see each trade as it comes (before the candles read with it)
                fires += engine.on_trades(value.exchange, value.symbol, value.trades)
        if market:
            with metrics.EVALUATION_SECONDS.time():
                fires += engine.on_batch(market)
            metrics.RULES_EVALUATED.inc(engine.take_evaluations())
        if engine.waiting and self.settings.clock == "wall":  # live: bars waited long enough for other series
            fires += engine.flush_deferred(wall_clock_ms() - self.settings.cross_series_wait_ms)
        if fires:
            await self.commit.publish(fires, batch)
            # acked here, not by the consumer after: a failed ack, like a failed commit, re-warms (``_handle``)
            await self.consumer.ack(batch)
