"""alert_engine wiring: which series the rules need, consume their candles (and tickers), gate, publish alerts.

Where things happen:
- ``_sync_series``: symbol patterns → (exchange, symbol, timeframe) from the registries; ``SUBSCRIPTIONS`` ref counts
  follow the rules (incremented when a series becomes needed, decremented when no rule needs it any more / on stop);
  new streams are warmed up (closed candles this group already processed) before they are consumed.
- ``_handle``: candles / tickers → ``core.AlertEngine`` → ``Fire`` → ``_COMMIT`` (one Lua script per batch: per fire
  alert id seen? → cooldown in exchange time → XADD alerts + history + PUBLISH; then the state rows and the batch's
  XACKs), so replicas and restarts never double-fire and a candle is acked only with its alerts.
- ``_maybe_reload``: the rules file is re-read when it changes; a bad new file keeps the old rules running. Every
  successful load replaces ``streams.FILE_RULES`` (name → the rule's YAML as in the file) for the API to list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from redis.asyncio import Redis

from services.alert_engine import core
from services.alert_engine.rules import RuleSet, load_rules_file, parse_rule_text
from services.alert_engine.settings import Settings
from shared import streams
from shared.bus import Batch, Bus, Consumer
from shared.bus import as_str as _s
from shared.errors import ConfigError, DecodeError
from shared.history import MAX_HISTORY_BARS
from shared.runtime import consumer_name, heartbeat
from shared.schemas import Candle, GapMarker, Ticker, TradeBatch, Watermark, feed_from_msg, pack, unpack
from shared.yamlfile import load_yaml_file

logger = logging.getLogger(__name__)

_COMMIT = resources.files(__package__).joinpath("commit.lua").read_text()
_ACK_CHUNK = 1000  # ids per XACK in the script (Lua's unpack has a stack limit)

# Subscribing, atomically with other subscribers of the same series (the engine's replicas, the API):
# the look-back becomes the max of what is there and ours (never lowered by a smaller need), then the count goes up.
# KEYS: SUBSCRIPTIONS, SUBSCRIPTION_LOOKBACK; ARGV: member, look-back, 1 (increment) | 0 (look-back only), ...
_SUBSCRIBE = """
for i = 1, #ARGV, 3 do
  local want = tonumber(ARGV[i + 1])
  local have = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  if want > have then redis.call('HSET', KEYS[2], ARGV[i], want) end
  if ARGV[i + 2] == '1' then redis.call('HINCRBY', KEYS[1], ARGV[i], 1) end
end
return 1
"""
# Unsubscribing: the count goes down; at 0 the series and its look-back are removed together.
# KEYS: SUBSCRIPTIONS, SUBSCRIPTION_LOOKBACK; ARGV: members
_UNSUBSCRIBE = """
for i = 1, #ARGV do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], -1) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return 1
"""


def decode_input(raw: bytes) -> Candle | Ticker | TradeBatch | GapMarker | Watermark:
    """Decode an entry of a candle, live-candle, ticker or trades stream."""
    msg = unpack(raw)
    kind = msg.get("k") if isinstance(msg, dict) else None
    if kind == "ticker":
        return Ticker.from_msg(msg)
    if kind == "candle":
        return Candle.from_msg(msg)
    if kind in ("trades", "gap", "watermark"):
        return feed_from_msg(msg)
    raise DecodeError(f"expected a candle, a ticker or trades, got kind {kind!r}")


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def read_rules_file(path: str | Path) -> tuple[RuleSet, dict[str, str] | None]:
    """The validated rules of a rules file, and each rule's mapping as written there (name → YAML text).

    The texts come from the parsed YAML, not from the model (``dump_rule`` does not round-trip). None when they do
    not match the validated rules (the file changed between the two reads): the next reload writes them.
    """
    ruleset = load_rules_file(path)
    try:
        data, _ = load_yaml_file(path)
    except ConfigError:
        return ruleset, None
    entries = data.get("rules") if isinstance(data, dict) else data
    texts = {entry["name"]: yaml.safe_dump(entry, sort_keys=False, allow_unicode=True)
             for entry in entries or [] if isinstance(entry, dict) and isinstance(entry.get("name"), str)}
    if set(texts) != {r.name for r in ruleset.rules}:
        logger.warning("rules file %s changed while it was read; its rules are not listed for the API yet", path)
        return ruleset, None
    return ruleset, texts


class _Acks:
    """Takes a batch's XACKs (``Batch.ack_with``) for the commit script, which runs them with the alerts."""

    def __init__(self) -> None:
        self.ids: dict[str, list[Any]] = {}

    def xack(self, stream: str, group: str, *ids: Any) -> None:
        self.ids.setdefault(stream, []).extend(ids)


class AlertEngineApp:
    """The alert engine service: ``await AlertEngineApp(settings, redis).run(stop)``."""

    def __init__(self, settings: Settings, redis: Redis, *, ruleset: RuleSet | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.bus = Bus(redis)
        # the file's rules as YAML texts, waiting to be written to FILE_RULES (None: nothing to write)
        self._file_texts: dict[str, str] | None = None
        if ruleset is None:
            self.ruleset, self._file_texts = read_rules_file(settings.rules_file)
        else:
            self.ruleset = ruleset
        self.file_ruleset = self.ruleset
        self._api_texts: dict[str, str] | None = None
        self.engine = core.AlertEngine(self.ruleset, keep=settings.history_bars,
                                       clock=wall_clock_ms if settings.clock == "wall" else None)
        self._rules_mtime = self._mtime() if ruleset is None else None
        # every stream of a read in one batch: one gate round trip for the candles a second boundary closes at once
        self.consumer = Consumer(self.bus, group=streams.GROUP_ALERT_ENGINE,
                                 consumer=consumer_name("alert_engine", settings.consumer_name), decode=decode_input,
                                 handler=self._handle, count=settings.batch, block_ms=settings.block_ms)
        self._commit_script = redis.register_script(_COMMIT)
        self._subscribe_script = redis.register_script(_SUBSCRIBE)
        self._unsubscribe_script = redis.register_script(_UNSUBSCRIBE)
        self._capped: set[tuple[str, tuple[str, str, str], int]] = set()  # (rule, series, need) already logged
        self.subscribed: set[tuple[str, str, str]] = set()  # series counted in SUBSCRIPTIONS by us
        self.lookback: dict[tuple[str, str, str], int] = {}  # what we wrote to SUBSCRIPTION_LOOKBACK
        self.history_from: dict[tuple[str, str, str], int] = {}  # CANDLE_HISTORY_FROM of a series, as last seen
        self.refilled = 0  # series whose kept history was re-read from their stream (grown look-back, backfill)
        self._bad_history_from: set[tuple[tuple[str, str, str], Any]] = set()  # bad CANDLE_HISTORY_FROM values logged
        self.consumed: set[str] = set()
        self.published = 0
        self.suppressed = 0
        self.duplicates = 0
        self.reload_error: str | None = None
        self._cooldown_until: dict[str, int] = {}
        self._tick_pairs: set[tuple[str, str]] = set()  # pairs whose trades tick-level rules read

    # ---- lifecycle --------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self._write_file_rules()
        await self._load_api_rules()
        await self._sync_series()
        tasks = [
            asyncio.create_task(self.consumer.run(stop), name="alert_engine-consume"),
            asyncio.create_task(self._housekeeping(stop), name="alert_engine-sync"),
            asyncio.create_task(heartbeat(self.redis, "alert_engine", stop, self.status), name="alert_engine-hb"),
        ]
        try:
            await stop.wait()
            await asyncio.gather(*tasks)
            if self.settings.clock == "exchange":
                # a backtest ends when its input does: bars still waiting for another series are evaluated now.
                # Live, they are not (they were acked): a restart's warm-up finds them waiting again.
                await self._flush_deferred(None)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._unsubscribe(set(self.subscribed))

    async def drain(self, *, final: bool = True) -> int:
        """Burst mode (tests, backtest): sync series once, then process everything available now.

        ``final``: what was read is all there is, so bars still waiting for another series (see
        ``core.AlertEngine.flush_deferred``) are evaluated with what that series has; False leaves them waiting for
        the next drain.
        """
        await self._write_file_rules()
        await self._load_api_rules()
        await self._sync_series()
        n = await self.consumer.drain()
        if final:
            await self._flush_deferred(None)
        if self.engine.stale:  # backfilled candles read last: merged now rather than at the next evaluation
            self.engine.rewarm()
        return n

    async def _flush_deferred(self, waited_since: int | None) -> None:
        fires = self.engine.flush_deferred(waited_since)
        if fires:
            await self.publish(fires)

    def status(self) -> dict[str, Any]:
        return {"rules": len(self.engine.rules), "series": len(self.subscribed), "published": self.published,
                "suppressed": self.suppressed, "duplicates": self.duplicates,
                "reload_error": self.reload_error or "", "deferred": self.engine.deferred}

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_sync = next_reload = loop.time()
        while not stop.is_set():
            try:
                if loop.time() >= next_reload:
                    next_reload = loop.time() + self.settings.reload_every_s
                    if not await self._maybe_reload() and await self._load_api_rules():
                        await self._sync_series()
                    await self._save_all_state()
                if loop.time() >= next_sync:
                    next_sync = loop.time() + self.settings.registry_poll_s
                    await self._sync_series()
                if self.engine.waiting and self.settings.clock == "wall":  # no input came to end the wait
                    await self._flush_deferred(wall_clock_ms() - self.settings.cross_series_wait_ms)
                if self.engine.stale:  # a backfill read while no new bar came: merged now, not at the next bar
                    self.engine.rewarm()
            except Exception:  # a transient Redis error must not stop the engine
                logger.exception("alert_engine: housekeeping failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(self.settings.reload_every_s,
                                                                self.settings.registry_poll_s,
                                                                max(0.05, self.settings.cross_series_wait_ms / 2000)))

    # ---- rules ------------------------------------------------------------------------------------------------------

    def _mtime(self) -> float | None:
        try:
            return Path(self.settings.rules_file).stat().st_mtime_ns
        except OSError:
            return None

    async def _maybe_reload(self) -> bool:
        """Re-read the rules file if it changed; a bad file keeps the current rules and is reported."""
        await self._write_file_rules()  # a write a Redis error interrupted last time
        if self._rules_mtime is None:
            return False
        mtime = self._mtime()
        if mtime is None or mtime == self._rules_mtime:
            return False
        self._rules_mtime = mtime
        try:
            ruleset, self._file_texts = read_rules_file(self.settings.rules_file)
        except ConfigError as exc:
            self.reload_error = "; ".join(exc.problems)
            logger.error("rules file changed but is invalid; keeping the %d current rules:\n  %s",
                         len(self.ruleset.rules), "\n  ".join(exc.problems))
            return False
        self.file_ruleset = ruleset
        self._api_texts = None
        await self._write_file_rules()
        if not await self._load_api_rules():
            self.set_rules(ruleset)
        await self._sync_series()
        logger.info("rules reloaded from %s: %d rules", self.settings.rules_file, len(ruleset.rules))
        return True

    async def _write_file_rules(self) -> None:
        """Replace ``streams.FILE_RULES`` with the last loaded file's rules, atomically (removed rules disappear)."""
        texts = self._file_texts
        if texts is None:
            return
        async with self.redis.pipeline(transaction=True) as tx:
            tx.delete(streams.FILE_RULES)
            if texts:
                tx.hset(streams.FILE_RULES, mapping=texts)
            await tx.execute()
        self._file_texts = None

    def set_rules(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.engine.set_rules(ruleset)
        self.reload_error = None

    async def _load_api_rules(self) -> bool:
        """Merge the rules the API manages (``streams.RULES``: name → YAML) over the file's; True if they changed.

        A rule in the hash overrides the file's rule of the same name (so the API can disable or snooze it). A bad
        entry is skipped and reported; the others still load.
        """
        raw = await self.redis.hgetall(streams.RULES)
        texts = {_s(k): _s(v) for k, v in raw.items()}
        if texts == self._api_texts:
            return False
        self._api_texts = texts
        merged = {r.name: r for r in self.file_ruleset.rules}
        problems: list[str] = []
        for name, text in sorted(texts.items()):
            try:
                rule = parse_rule_text(text, f"{streams.RULES}[{name}]")
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            merged[rule.name] = rule
        if problems:
            logger.error("skipping invalid rules from the API:\n  %s", "\n  ".join(problems))
        self.set_rules(RuleSet(rules=list(merged.values()), source=self.file_ruleset.source))
        self.reload_error = "; ".join(problems) or None
        return True

    # ---- series and subscriptions -----------------------------------------------------------------------------------

    async def _known_symbols(self) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for member in await self.redis.smembers(streams.FEED_REGISTRY):
            parts = streams.split_registry_member(member)
            if len(parts) >= 2:
                out.add((parts[0], parts[1]))
        for member in await self.redis.smembers(streams.CANDLE_REGISTRY):
            parts = streams.split_registry_member(member)
            if len(parts) >= 3:
                out.add((parts[0], parts[1]))
        for rule in self.engine.rules:  # explicit symbols on a named exchange are needed even before they appear
            if rule.exchange is not None:
                out.update((rule.exchange, s) for s in rule.symbols if not any(c in s for c in "*?["))
        return out

    async def wanted(self) -> tuple[set[tuple[str, str, str]], set[tuple[str, str]], set[tuple[str, str]]]:
        """Series (candles), and symbols whose tickers and trades (for tick-level rules) the rules read."""
        series: set[tuple[str, str, str]] = set()
        tickers: set[tuple[str, str]] = set()
        trades: set[tuple[str, str]] = set()
        for ex, sym in await self._known_symbols():
            tfs = self.engine.needs(ex, sym)
            series.update((ex, sym, tf) for tf in tfs)
            if self.engine.needs_tickers(ex, sym):
                tickers.add((ex, sym))
            if self.settings.intrabar and self.engine.needs_trades(ex, sym):
                trades.add((ex, sym))
        return series, tickers, trades

    def series_lookback(self, key: tuple[str, str, str]) -> int:
        """Closed candles series ``key`` is read back with (warm-up) and asked of candle_builder: the rules' longest
        look-back, at least ``warmup_bars``, at most ``MAX_HISTORY_BARS`` (a cut need is logged once)."""
        needs = self.engine.lookbacks(*key)
        for rule, need in needs.items():
            if need > MAX_HISTORY_BARS and (rule, key, need) not in self._capped:
                self._capped.add((rule, key, need))
                logger.warning("alert_engine: rule %r needs %d closed %s candles of %s %s; look-back cut to %d "
                               "(candle_builder's most): its values are approximate until the series has run that long",
                               rule, need, key[2], key[0], key[1], MAX_HISTORY_BARS)
        return min(MAX_HISTORY_BARS, max(self.settings.warmup_bars, *needs.values(), 0))

    async def _sync_series(self) -> None:
        series, tickers, trades = await self.wanted()
        added, removed = series - self.subscribed, self.subscribed - series
        lookback = {key: self.series_lookback(key) for key in series}
        changed = {key: n for key, n in lookback.items() if self.lookback.get(key) != n}
        # consumed series whose look-back grew (a rule added by a reload): the stream may hold older candles than the
        # engine kept, read back below once the builder has the need
        grew = {key for key, n in changed.items() if key in self.subscribed and n > self.lookback.get(key, 0)}
        if added or changed:
            # one script: max(look-back there, ours), then the count (a builder that sees the series sees its need)
            args: list[Any] = []
            for key in sorted(changed.keys() | added):
                args += [streams.registry_member(*key), lookback[key], int(key in added)]
            await self._subscribe_script(keys=[streams.SUBSCRIPTIONS, streams.SUBSCRIPTION_LOOKBACK], args=args)
            self.subscribed |= added
            self.lookback.update(changed)
        for key in series:
            self.engine.reserve(key, lookback[key])
        if removed:
            await self._unsubscribe(removed)
        names: dict[str, tuple] = {}
        for ex, sym, tf in series:
            names[streams.candles(ex, sym, tf)] = ("candle", ex, sym, tf)
            if self.settings.intrabar and self.engine.live_rules(ex, sym, tf):
                names[streams.candles_live(ex, sym, tf)] = ("live", ex, sym, tf)
        for ex, sym in tickers:
            names[streams.tickers(ex, sym)] = ("ticker", ex, sym)
        for ex, sym in trades:
            names[streams.trades(ex, sym)] = ("trades", ex, sym)
        self._tick_pairs = {pair for pair in trades if self.settings.intrabar and self.engine.needs_trades(*pair)}
        new = [n for n in names if n not in self.consumed]
        await self._warm_up([(name, names[name][1:]) for name in sorted(new) if names[name][0] == "candle"])
        await self._refill(grew - {names[n][1:] for n in new if names[n][0] == "candle"})
        if set(names) != self.consumed:
            self.consumed = set(names)
            self.consumer.set_streams(sorted(names))
            if new:
                logger.info("alert_engine: reading %d streams (%d new)", len(names), len(new))

    async def _unsubscribe(self, keys: set[tuple[str, str, str]]) -> None:
        if not keys:
            return
        await self._unsubscribe_script(keys=[streams.SUBSCRIPTIONS, streams.SUBSCRIPTION_LOOKBACK],
                                       args=[streams.registry_member(*key) for key in sorted(keys)])
        self.subscribed -= keys
        for key in keys:
            self.lookback.pop(key, None)

    async def _warm_up(self, new: list[tuple[str, tuple[str, str, str]]]) -> None:
        """Feed the closed candles this group already processed on the new streams (``series_lookback`` of each),
        all streams merged in exchange-time order, without firing.

        Merged, a rule reading another series sees that series as of each bar (see ``core.AlertEngine.on_batch``),
        and a bar whose other series had not been processed yet (its evaluation was waiting when the engine stopped)
        stays waiting: it fires when that series arrives. Entries delivered but not acked (a crash mid-batch) are
        left to the consumer, which re-reads them.
        """
        candles: list[Candle] = []
        for stream, key in new:
            candles += await self._processed_candles(stream, self.lookback.get(key, self.settings.warmup_bars))
        if candles:
            self.engine.on_batch(candles, fire=False)

    async def _refill(self, grew: set[tuple[str, str, str]]) -> None:
        """Re-warm consumed series from their stream when it holds older history than they kept: those whose
        look-back grew (``grew``), and those whose ``CANDLE_HISTORY_FROM`` moved back (candle_builder backfilled).

        The processed candles (``_processed_candles``, the look-back's worth) are merged into the series' kept history
        (``core.AlertEngine.merge``: ts order, indicators rebuilt, nothing evaluated). Backfilled candles the group has
        not processed yet need nothing here: the consumer delivers them, older than the series' last bar, and the
        engine merges them the same way. Reading them back here also covers replicas (another consumer of the group
        may have been delivered the backfill) and a look-back grown over candles the stream already had.
        """
        keys = sorted(self.subscribed)
        if not keys:
            return
        raw = await self.redis.hmget(streams.CANDLE_HISTORY_FROM, [streams.registry_member(*key) for key in keys])
        moved: set[tuple[str, str, str]] = set()
        for key, value in zip(keys, raw, strict=True):
            try:
                since = int(value)
            except (TypeError, ValueError):  # absent (no history yet), or not ours to fix: never stops the sync
                if value is not None and (key, value) not in self._bad_history_from:
                    self._bad_history_from.add((key, value))
                    logger.warning("alert_engine: ignoring %s[%s] = %r (not a timestamp)", streams.CANDLE_HISTORY_FROM,
                                   streams.registry_member(*key), value)
                continue
            if since < self.history_from.get(key, since + 1):  # first seen, or further back than last time
                moved.add(key)
            self.history_from[key] = since
        for key in sorted(grew | moved):
            series = self.engine.series.get(key)
            stream = streams.candles(*key)
            if series is None or stream not in self.consumed:
                continue  # not consumed yet: its warm-up reads the look-back
            need = min(self.lookback.get(key, 0), series.keep)
            have = len(series.candles)
            if have >= need or (key not in grew and have and series.candles[0].ts <= self.history_from[key]):
                continue  # already holds what the rules need, or the history the stream has
            if self.engine.merge(key, await self._processed_candles(stream, need)):
                self.refilled += 1
                logger.info("alert_engine: %s %s %s re-warmed from its stream: %d closed candles kept (%d before; "
                            "the rules need %d)", *key, len(series.candles), have, need)

    async def _processed_candles(self, stream: str, n: int) -> list[Candle]:
        """The newest ``n`` closed candles (by bucket, last revision) of ``stream`` this group already processed.

        candle_builder appends backfilled history after newer candles (``streams.CANDLE_HISTORY_FROM``), so the
        last ``n`` entries need not be the newest ``n`` buckets: twice as many entries are read and sorted.
        """
        if n <= 0:
            return []
        try:
            groups = await self.redis.xinfo_groups(stream)
        except Exception:
            return []
        group = next((g for g in groups if _s(g.get("name")) == streams.GROUP_ALERT_ENGINE), None)
        if group is None:
            return []  # a new group reads the stream from its start: nothing was processed before
        last = _s(group["last-delivered-id"])
        if last in ("0-0", "0"):
            return []
        pending = await self.redis.xpending(stream, streams.GROUP_ALERT_ENGINE)
        boundary = last  # inclusive: the last delivered entry was processed (unless it is still pending)
        if pending and pending.get("pending"):
            boundary = f"({_s(pending['min'])}"
        entries = await self.redis.xrevrange(stream, max=boundary, min="-", count=2 * n)
        latest: dict[int, Candle] = {}
        for _, fields in reversed(entries):
            try:
                candle = decode_input(fields[b"d"])
            except (DecodeError, KeyError):
                continue
            if isinstance(candle, Candle) and candle.closed:
                have = latest.get(candle.ts)
                if have is None or candle.revision >= have.revision:
                    latest[candle.ts] = candle
        out = [latest[ts] for ts in sorted(latest)[-n:]]
        logger.debug("alert_engine: warming up %s with %d candles", stream, len(out))
        return out

    # ---- the hot path -----------------------------------------------------------------------------------------------

    async def _handle(self, batch: Batch) -> None:
        """A batch of candles, tickers and trades → the engine → the commit of its alerts with the batch's XACKs."""
        fires: list[core.Fire] = []
        market: list[Candle | Ticker] = []
        tick_pairs = self._tick_pairs
        for entry in batch.entries:
            value = entry.value
            kind = type(value)
            if kind is Candle or kind is Ticker:
                market.append(value)
            elif kind is TradeBatch and (value.exchange, value.symbol) in tick_pairs:
                # tick-level rules see each trade as it comes (before the candles read with it, as before)
                fires.extend(self.engine.on_trades(value.exchange, value.symbol, value.trades))
        if market:
            fires.extend(self.engine.on_batch(market))
        if self.engine.waiting and self.settings.clock == "wall":  # live: bars waited long enough for other series
            fires.extend(self.engine.flush_deferred(wall_clock_ms() - self.settings.cross_series_wait_ms))
        if fires:
            await self.publish(fires, batch)

    async def publish(self, fires: list[core.Fire], batch: Batch | None = None) -> list[int]:
        """Gate and publish; returns the gate's answers (1 published, 0 duplicate, -1 cooling down).

        One script call (``commit.lua``) gates every fire, writes the touched fingerprints' RULE_STATE rows and, with
        ``batch``, its XACKs, atomically. Each fire's answer is predicted from this engine's own cooldown knowledge
        and its effects applied before the call, so the rows it carries are right; a wrong prediction (a replay,
        another replica's cooldown) is redone with the real answer after it.
        """
        predicted, saved, touched = self._apply_predicted(fires)
        keys: list[Any] = [streams.ALERTS, streams.ALERT_HISTORY, streams.RULE_STATE]
        fire_args: list[Any] = []
        for f, p in zip(fires, predicted, strict=True):
            keys += (streams.alert_fired(f.alert.id), streams.alert_cooldown(f.fingerprint))
            fire_args += (f.alert.encode(), f.now_ms, f.cooldown_ms, f.fingerprint, 1 if p == 1 else 0)
        rows = self._state_rows(touched)
        row_args: list[Any] = [x for fp, row in rows.items() for x in (fp, row)]
        ack_args: list[Any] = []
        if batch is not None and not batch.acked:
            acks = _Acks()
            batch.ack_with(acks)  # the XACKs run inside the script, after the alerts they carry
            for stream, ids in acks.ids.items():
                for i in range(0, len(ids), _ACK_CHUNK):
                    chunk = ids[i:i + _ACK_CHUNK]
                    keys.append(stream)
                    ack_args += (len(chunk), *chunk)
        s = self.settings
        args: list[Any] = [streams.CHANNEL_ALERTS, s.alerts_maxlen, s.history_maxlen, s.fired_ttl_s * 1000,
                           batch.group if batch is not None else "", len(fires), len(rows),
                           len(keys) - 3 - 2 * len(fires), *fire_args, *row_args, *ack_args]
        answers = [int(a) for a in await self._commit_script(keys=keys, args=args)]
        await self._take_answers(fires, predicted, answers, saved, touched)
        return answers

    def _apply_predicted(self, fires: list[core.Fire]) -> tuple[list[int], dict[str, tuple[int | None, int | None]],
                                                                  dict[str, core.Fire]]:
        """Each fire's answer as this engine predicts it (1 published, -1 cooling down), its effects applied; what
        they replaced per fingerprint (to undo a wrong prediction); the last fire per fingerprint."""
        predicted: list[int] = []
        saved: dict[str, tuple[int | None, int | None]] = {}
        touched: dict[str, core.Fire] = {}
        status = self.engine.status
        for f in fires:
            fp = f.fingerprint
            until = self._cooldown_until.get(fp)
            if fp not in saved:
                st = status.get(fp)
                saved[fp] = (until, st.last_fired_ms if st is not None else None)
            p = -1 if f.cooldown_ms and until is not None and (until < 0 or f.now_ms < until) else 1
            predicted.append(p)
            if p == 1:
                self._apply_published(f)
            touched[fp] = f
        return predicted, saved, touched

    async def _take_answers(self, fires: list[core.Fire], predicted: list[int], answers: list[int],
                            saved: dict[str, tuple[int | None, int | None]], touched: dict[str, core.Fire]) -> None:
        """Count the answers; redo the effects of the fingerprints whose answer was predicted wrong, and write their
        rows (the commit left them out)."""
        wrong = {f.fingerprint for f, p, a in zip(fires, predicted, answers, strict=True) if (a == 1) != (p == 1)}
        if wrong:
            status = self.engine.status
            for fp in wrong:
                until, last_fired = saved[fp]
                if until is None:
                    self._cooldown_until.pop(fp, None)
                else:
                    self._cooldown_until[fp] = until
                if fp in status:
                    status[fp].last_fired_ms = last_fired
            for f, a in zip(fires, answers, strict=True):
                if a == 1 and f.fingerprint in wrong:
                    self._apply_published(f)
        for f, answer in zip(fires, answers, strict=True):
            if answer == 1:
                self.published += 1
                logger.info("alert %s %s %s %s: %s", f.alert.rule, f.alert.symbol, f.alert.timeframe,
                            f.alert.state, f.alert.message)
            elif answer == 0:
                self.duplicates += 1
            else:
                self.suppressed += 1
        if wrong:
            fixed = self._state_rows({fp: f for fp, f in touched.items() if fp in wrong})
            if fixed:
                await self.redis.hset(streams.RULE_STATE, mapping=fixed)

    def _apply_published(self, f: core.Fire) -> None:
        if f.cooldown_ms:
            self._cooldown_until[f.fingerprint] = -1 if f.cooldown_ms < 0 else f.now_ms + f.cooldown_ms
        if f.alert.state == "firing":
            self.engine.mark_fired(f.fingerprint, f.now_ms)

    async def _save_all_state(self) -> None:
        """Every fingerprint's state (pending/firing/inactive, last value) for the API, periodically."""
        rows = self.engine.status_rows()
        if not rows:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for fp in rows:
                pipe.get(streams.alert_cooldown(fp))
            cooldowns = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for (fp, row), until in zip(rows.items(), cooldowns, strict=True):
                pipe.hset(streams.RULE_STATE, fp, pack(self._state_row(row, until)))
            await pipe.execute()

    def _state_row(self, row: dict[str, Any], until: bytes | None,
                   by_name: dict[str, Any] | None = None) -> dict[str, Any]:
        rule = (by_name if by_name is not None else self.ruleset.by_name()).get(row["rule"])
        until_ms = int(until) if until is not None else None
        return {**row, "cooldown_until": until_ms, "cooldown_ms": rule.cooldown_ms if rule else 0,
                "next_eligible": until_ms if until_ms is not None and until_ms >= 0 else None,
                "updated_at": int(time.time() * 1000)}

    def _state_rows(self, touched: dict[str, core.Fire]) -> dict[str, bytes]:
        """Packed RULE_STATE rows of the fingerprints a batch touched (cooldown as this engine knows it: no reads)."""
        by_name = self.ruleset.by_name()  # only the touched fingerprints' rows (status_rows() builds every one)
        rows: dict[str, bytes] = {}
        for fp, f in touched.items():
            st = self.engine.status.get(fp)
            if st is not None:
                u = self._cooldown_until.get(fp)
                rows[fp] = pack({**self._state_row(st.as_dict(), None if u is None else str(u).encode(), by_name),
                                 "last_alert_id": f.alert.id})
        return rows
