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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from services.alert_engine import core
from services.alert_engine.fastclose import TOP_UP_MS, FastClose
from services.alert_engine.rules import RuleSet, load_rules_file, parse_rule_text
from services.alert_engine.settings import Settings
from shared import streams
from shared.bus import Batch, Bus, Consumer
from shared.bus import as_str as _s
from shared.errors import ConfigError, DecodeError
from shared.history import MAX_HISTORY_BARS
from shared.runtime import heartbeat
from shared.schemas import Candle, GapMarker, Ticker, TradeBatch, Watermark, feed_from_msg, pack, unpack
from shared.timeframes import close_wait, near_close
from shared.yamlfile import load_yaml_file

logger = logging.getLogger(__name__)

# One call per batch that fires: every fire's gate (alert id seen? -> cooldown in exchange time -> XADD alerts +
# history + PUBLISH; without a cooldown the id test is one SET NX), the RULE_STATE rows of the fingerprints it touched
# (one HSET per 1,000), and the batch's XACKs, atomically: a candle is acked only together with its gate decisions and
# alert writes. (~57 µs of Redis for 5 alerts: every redis.call is ~2 µs of the script's time.)
# The rows are built by the app before the answers are known, from the answer it predicts per fire (its own cooldown
# knowledge); a fingerprint with a fire whose answer differs (a replay, another replica's cooldown) gets no row here:
# the app writes the right one after.
# KEYS: alerts stream, history stream, RULE_STATE, per fire (fired-id key, cooldown key), per ack group (stream)
# ARGV: channel, alerts maxlen, history maxlen, fired ttl ms, group, #fires, #rows, #ack groups,
#       per fire (alert bytes, now (exchange ms), cooldown ms (-1 forever, 0 none), fingerprint, predicted 1|0),
#       per row (fingerprint, packed row), per ack group (#ids, ids...)
# Returns per fire: 1 published, 0 duplicate id (replay), -1 cooling down.
_COMMIT = """
local nf, nr, na = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local ttl = ARGV[4]
local out, off = {}, {}
local a = 9
for i = 1, nf do
  local kf, kc = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local cd = tonumber(ARGV[a + 2])
  local r = 1
  if cd == 0 then
    -- no cooldown: the id's first publish is the only test (one call: set unless it exists)
    if not redis.call('SET', kf, ARGV[a + 1], 'PX', ttl, 'NX') then r = 0 end
  elseif redis.call('EXISTS', kf) == 1 then
    r = 0
  else
    local now = tonumber(ARGV[a + 1])
    local untl = redis.call('GET', kc)
    if untl then
      untl = tonumber(untl)
      if untl < 0 or now < untl then r = -1 end
    end
    if r == 1 then
      if cd < 0 then
        redis.call('SET', kc, -1)
      else
        redis.call('SET', kc, now + cd, 'PX', cd)
      end
      redis.call('SET', kf, now, 'PX', ttl)
    end
  end
  if r == 1 then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[a])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'd', ARGV[a])
    redis.call('PUBLISH', ARGV[1], ARGV[a])
  end
  if (r == 1) ~= (ARGV[a + 4] == '1') then off[ARGV[a + 3]] = true end
  out[i] = r
  a = a + 5
end
local rows = {}
for i = 1, nr do
  if not off[ARGV[a]] then
    rows[#rows + 1] = ARGV[a]
    rows[#rows + 1] = ARGV[a + 1]
  end
  a = a + 2
  if #rows >= 2000 or (i == nr and #rows > 0) then  -- (unpack's stack limit)
    redis.call('HSET', KEYS[3], unpack(rows))
    rows = {}
  end
end
for i = 1, na do
  local n = tonumber(ARGV[a])
  redis.call('XACK', KEYS[3 + 2 * nf + i], ARGV[5], unpack(ARGV, a + 1, a + n))
  a = a + n + 1
end
return out
"""
_ACK_CHUNK = 1000  # ids per XACK in the script (Lua's unpack has a stack limit)
# _linger: reads follow at once from CLOSE_LEAD_MS before a bar's close (time to read what lingered before it) until
# CLOSE_TAIL_MS after it (the first trades after a close can come late: a quieter pair, a slower feed)
CLOSE_LEAD_MS = 10
CLOSE_TAIL_MS = 200

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
        return feed_from_msg(msg)  # the one trades decoder: the bars closed here see the entries the builder sees
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


@dataclass(slots=True)
class _Commit:
    """A commit sent (``AlertEngineApp._send_commit``) whose answers are not taken yet."""

    fires: list[core.Fire]
    predicted: list[int]  # per fire: the answer its effects were applied for (1 published, -1 cooling down)
    saved: dict[str, tuple[int | None, int | None]]  # fingerprint -> (cooldown until, last fired) before them
    touched: dict[str, core.Fire]  # fingerprint -> its last fire (its RULE_STATE row)
    keys: list[Any]
    args: list[Any]
    batch: Batch | None  # whose XACKs it carries
    replies: list[Any]  # the commit's replies (errors as exceptions)


@dataclass(slots=True)
class _Staged:
    """A commit built but not sent (``AlertEngineApp._stage``): ``_COMMIT``'s per-fire keys and arguments and its
    RULE_STATE rows; ``basis``: per fingerprint, the (cooldown until, last fired) it was built on."""

    fires: list[core.Fire]
    predicted: list[int]
    touched: dict[str, core.Fire]
    fire_keys: list[Any]
    fire_args: list[Any]
    row_args: list[Any]
    rows: int
    basis: dict[str, tuple[int | None, int | None]]


class AlertEngineApp:
    """The alert engine service: ``await AlertEngineApp(settings, redis).run(stop)``."""

    def __init__(self, settings: Settings, redis: Redis, *, ruleset: RuleSet | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.bus = Bus(redis, settings.bus_settings(), service="alert_engine")
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
        self.consumer = Consumer(self.bus, settings.consumer_settings(streams.GROUP_ALERT_ENGINE, "alert_engine",
                                                                      count=settings.batch, block_ms=settings.block_ms),
                                 decode=decode_input, handler=self._handle)
        self._commit_sha = redis.register_script(_COMMIT).sha
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
        # fast close (fastclose.py): pair -> timeframes whose bars are closed here from its trades
        self.fast = FastClose(redis) if settings.fast_close else None
        self._fast_tfs: dict[tuple[str, str], set[str]] = {}
        self._tick_pairs: set[tuple[str, str]] = set()  # pairs whose trades tick-level rules read
        self._linger_ok = False  # everything read is closed-bar work (see _linger)
        self._specs: dict[tuple[str, str, str], core.Speculation] = {}  # series -> its bar evaluated ahead (_speculate)
        self._unspeculated: dict[tuple[str, str], None] = {}  # pairs read since their last speculation, in order
        # pair -> (its replica's state, the candles its next close gives from that state), taken by _speculate: a
        # batch that closes them from that state is evaluated and committed before its entries are applied
        self._marks: dict[tuple[str, str], tuple[Any, list[Candle]]] = {}
        # pair -> the commit of its next close's alerts, built by _speculate with its speculations (sent at the close
        # before anything is evaluated, when they still hold)
        self._staged: dict[tuple[str, str], tuple[list[core.Speculation], _Staged]] = {}
        self.closed_ahead = 0  # bars evaluated and committed before their closing trades were applied (_ahead)
        self.ahead_mismatched = 0  # ... of which the replica then emitted something else (never expected)
        self.commits_staged = 0  # ... whose commit speculation had built (sent before the bars were evaluated)

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
        fast = self.fast
        return {"rules": len(self.engine.rules), "series": len(self.subscribed), "published": self.published,
                "suppressed": self.suppressed, "duplicates": self.duplicates,
                "reload_error": self.reload_error or "", "deferred": self.engine.deferred,
                "fast_closed": fast.closed if fast else 0, "fast_confirmed": fast.confirmed if fast else 0,
                "fast_mismatched": fast.mismatched if fast else 0,
                "speculations_taken": self.engine.speculations_taken, "closed_ahead": self.closed_ahead,
                "ahead_mismatched": self.ahead_mismatched, "commits_staged": self.commits_staged}

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
        """Series (candles), and symbols whose tickers and trades the rules read (trades: for tick-level rules, and
        with ``fast_close`` for every pair with a rule that can alert at a bar's close)."""
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
            if tfs and self.fast is not None and self.engine.fires_on_close(ex, sym):
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
        self._linger_ok = not self._tick_pairs and all(kind in ("candle", "trades") for kind, *_ in names.values())
        if self.fast is not None:  # the pairs wanted() reads trades of for fast close, with their series
            fast_tfs: dict[tuple[str, str], set[str]] = {}
            for ex, sym, tf in series:
                fast_tfs.setdefault((ex, sym), set()).add(tf)
            fast_tfs = {pair: tfs for pair, tfs in fast_tfs.items() if self.engine.fires_on_close(*pair)}
            for pair in self._fast_tfs.keys() - fast_tfs.keys():
                self.fast.forget(pair)
            self._fast_tfs = fast_tfs
            self._specs = {key: spec for key, spec in self._specs.items() if key[:2] in fast_tfs}
            self._marks.clear()  # their candles were built for the timeframes wanted then
            self._staged.clear()
        new = [n for n in names if n not in self.consumed]
        for name in new:
            if names[name][0] == "trades" and names[name][1:] not in self._tick_pairs:
                # read for fast close only: from now on (the replica starts from candle_builder's state)
                await self.bus.ensure_group(name, streams.GROUP_ALERT_ENGINE, "$")
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

    def _linger(self) -> float:
        """ms to wait after a read before the next one (``Consumer(linger=)``, asked after each read that delivered).

        Between bar closes a trade cannot close a bar, so the trades can wait ``linger_ms`` and be read in bigger
        batches; the wait ends ``CLOSE_LEAD_MS`` before the next close of any replica's base bucket (in exchange time,
        as the trades read so far tell it: ``FastClose.exchange_now``), and from then until ``CLOSE_TAIL_MS`` after it
        every read follows at once, so the trade that closes a bar is read when it comes. Only live, with fast close,
        and when nothing read needs each entry at once (tick-level, ticker or in-progress-candle rules); a wrong
        estimate of the exchange's clock only makes an alert up to ``linger_ms`` later. The tail ends early once every
        pair has read its first trade past the close (``FastClose.settled``): at 5k trades/s that is within ~2 ms, and
        200 ms of reading each entry at once was a fifth of every second."""
        fast = self._paced()
        if fast is None:
            return 0
        now, bases, linger = fast.exchange_now(time.time() * 1000), fast.bases(), self.settings.linger_ms
        wait = close_wait(now, bases, linger, CLOSE_LEAD_MS, CLOSE_TAIL_MS)
        if wait == 0 and fast.settled(now, CLOSE_TAIL_MS):
            wait = close_wait(now, bases, linger, CLOSE_LEAD_MS, 0)
        return wait

    def _paced(self) -> FastClose | None:
        """The fast close whose replicas' bar clock paces the reads (``_linger``, ``_top_up_early``): live, and only
        while everything read is closed-bar work; None otherwise."""
        fast = self.fast
        if not self._linger_ok or fast is None or not fast.replicas or self.settings.clock != "wall":
            return None
        return fast

    def _top_up(self, entries: list) -> bool:
        """``Consumer(top_up=)``: read once more at once when a read brought closing trades that others may be right
        behind (``FastClose.wants_top_up``). A blocked read returns with the first entry written, so trades that came
        together (every symbol's first trade past a boundary) would be read one, then the rest, and the rest would
        wait for the first one's evaluation and commit; one more read now (no wait, one round trip) makes them one
        batch with one commit."""
        return self.fast is not None and self.fast.wants_top_up(entries)

    def _top_up_early(self) -> bool:
        """``Consumer(top_up_early=)``: a blocking read that returned one entry is topped up before decoding it from
        ``CLOSE_LEAD_MS`` before a close until ``TOP_UP_MS`` after it (the closing trades written together with the
        one read, and just before a close the entries of the last trades, come as one batch, one evaluation ahead
        instead of two); only where ``_linger`` lingers between closes (nothing read needs each entry at once)."""
        fast = self._paced()
        if fast is None:
            return False
        now = fast.exchange_now(time.time() * 1000)
        return near_close(now, fast.bases(), CLOSE_LEAD_MS, TOP_UP_MS) and not fast.settled(now, TOP_UP_MS)

    async def _handle(self, batch: Batch) -> None:
        fires: list[core.Fire] = []
        entries = batch.entries
        fast = self.fast
        touched: set[tuple[str, str]] = set()
        if len(entries) == 1 and type(value := entries[0].value) is Candle:  # one candle (no fast close)
            if not value.closed:
                fires = self.engine.on_live_candle(value)
            elif fast is None or fast.confirm(value):
                fires = self.engine.on_candle(value)
        else:
            market: list[Candle | Ticker] = []
            later: list[Candle | Ticker] = []
            ahead = self._ahead(entries) if self._marks else None
            if ahead:
                await self._handle_ahead(batch, ahead, market, later, fires, touched)
            else:
                await self._sort(entries, market, later, fires, touched)
            market += later
            if market:
                fires.extend(self.engine.on_batch(market, speculations=self._specs))
        if self.engine.waiting and self.settings.clock == "wall":  # live: bars waited long enough for other series
            fires.extend(self.engine.flush_deferred(wall_clock_ms() - self.settings.cross_series_wait_ms))
        if fires:
            await self.publish(fires, batch)
        if fast is not None and self.settings.speculate_ms and (touched or self._unspeculated):
            wait = self._unspeculated
            wait.update(dict.fromkeys(touched))  # after the pairs left waiting by earlier batches
            now, window = fast.exchange_now(time.time() * 1000), self.settings.speculate_ms
            closing = []
            for pair in list(wait):
                if fast.due(pair, now, window):
                    closing.append(pair)
                else:
                    del wait[pair]
            if closing:
                if not batch.acked:
                    # the next read goes out now and waits while this works (its XACKs behind it: reads follow
                    # at once near a close)
                    await self.consumer.ack(batch)
                fast_tfs = self._fast_tfs
                self._speculate(closing, lambda pair: fast.closing(pair, fast_tfs.get(pair, ()), now, window))

    def _speculate(self, closing: list[tuple[str, str]], candles_of: Callable[[tuple[str, str]], list[Candle]],
                   busy: Callable[[], bool] = lambda: False) -> None:
        """Evaluate ahead the bars about to close (``closing``: pairs whose bars close within ``speculate_ms`` of the
        exchange's time as the trades read so far tell it; ``candles_of(pair)``: its bars as they would close if no
        other trade came, built only for the pairs reached): when the trade that closes one is read and the bar is as
        it was now, the close only publishes what was worked out here (``core.AlertEngine.speculate``). A wrong guess
        costs only the work: the bar is then evaluated as usual.

        Idle-time work: before each pair it asks ``busy()`` (the next read's reply is arriving) and, if so, stops. The
        pairs not reached stay in ``_unspeculated`` and come first after the next batch, which may hold the very trades
        that close their bars. At 5k trades/s over 10 pairs, each pair's speculation (~0.1 ms) run at once after every
        read kept the closing trades waiting behind it for 2-5 ms."""
        engine, specs, wait, fast = self.engine, self._specs, self._unspeculated, self.fast
        for pair in closing:
            if busy():
                return
            del wait[pair]
            mark = fast.mark(pair) if fast is not None else None
            candles = candles_of(pair)
            if mark is not None:
                self._marks[pair] = (mark, candles)
            made: list[core.Speculation] = []
            for candle in candles:
                key = (candle.exchange, candle.symbol, candle.timeframe)
                try:
                    spec = engine.speculate(candle)
                except Exception:  # never worth more than the bar's own evaluation, which follows as usual
                    logger.exception("alert_engine: speculating %s %s %s failed", *key)
                    spec = None
                if spec is None:
                    specs.pop(key, None)
                    continue
                for f in spec.fires:
                    f.packed = f.alert.encode()
                specs[key] = spec
                made.append(spec)
            self._staged.pop(pair, None)
            if candles and len(made) == len(candles):  # the close's whole commit, ready to send
                statuses = {fp: st for spec in made for fp, st in spec.statuses.items()}
                self._staged[pair] = (made, self._stage([f for spec in made for f in spec.fires], statuses))

    def _ahead(self, entries: list) -> list[Candle] | None:
        """Every bar this batch closes, known before its entries are applied: each pair's entries close its bar
        exactly as ``_speculate`` last built it (``FastClose.closes`` with the pair's mark) or close nothing, and the
        batch holds nothing else but candle_builder's candles of bars closed here that only confirm them (dropped
        by ``FastClose.confirm``). None when it cannot be told (then the batch takes the usual path)."""
        fast = self.fast
        if fast is None or self.engine.waiting:
            return None
        fast_tfs, tick_pairs, marks = self._fast_tfs, self._tick_pairs, self._marks
        by_pair: dict[tuple[str, str], list] = {}
        for entry in entries:
            value = entry.value
            if type(value) is not TradeBatch:
                if type(value) is Candle and value.closed and fast.confirms(value):
                    continue
                return None
            pair = (value.exchange, value.symbol)
            if pair in tick_pairs:
                return None
            if pair in fast_tfs:
                by_pair.setdefault(pair, []).append(entry)
        out: list[Candle] = []
        for pair, pair_entries in by_pair.items():
            marked = marks.get(pair)
            verdict = fast.closes(pair, pair_entries, marked[0] if marked is not None else None)
            if verdict is None:
                return None
            if verdict:
                candles = marked[1]  # type: ignore[index]
                if not candles or any(fast.builder_was_first(c) for c in candles):
                    return None
                out += candles
        return out

    async def _handle_ahead(self, batch: Batch, ahead: list[Candle], market: list, later: list,
                            fires: list[core.Fire], touched: set[tuple[str, str]]) -> None:
        """The bars ``_ahead`` found this batch closes: evaluated now and their alerts committed (with the batch's
        XACKs and the next read), and while Redis runs the commit the entries are applied to the replicas as usual
        (``_sort``). The bars the replicas emit are the ones evaluated; anything else they emit (never expected) goes
        on to ``market``, evaluated as usual."""
        pairs = list(dict.fromkeys((c.exchange, c.symbol) for c in ahead))
        for pair in pairs:
            del self._marks[pair]
        self.closed_ahead += len(ahead)
        staged = self._staged_for(pairs)
        if staged is not None:
            self.commits_staged += 1
            # speculation built this commit: it goes out first, the bars are evaluated (its speculations taken)
            # while Redis runs it, and its predicted effects applied after them, as publish would
            commit = await self._send_staged(staged, {}, batch) if staged.fires else None
            closed = self.engine.on_batch(ahead, speculations=self._specs)
            if commit is not None:
                commit.saved = self._apply_predicted(staged)
            sent = {id(f) for f in staged.fires}
            extra = [f for f in closed if id(f) not in sent]
            if extra or len(closed) != len(staged.fires):  # (the speculations held: never expected)
                self.ahead_mismatched += 1
                logger.warning("alert_engine: the alerts of bars evaluated ahead differ from the commit their "
                               "speculations built; %d more published after it", len(extra))
                fires.extend(extra)
        else:
            closed = self.engine.on_batch(ahead, speculations=self._specs)
            commit = await self._send_commit(closed, batch) if closed else None
        emitted: list[Candle | Ticker] = []
        try:
            await self._sort(batch.entries, emitted, later, fires, touched)
        finally:
            if commit is not None:
                await self._finish_commit(commit)
        done = {(c.exchange, c.symbol, c.timeframe, c.ts): c for c in ahead}
        for c in emitted:
            if done.pop((c.exchange, c.symbol, c.timeframe, c.ts), None) != c:
                market.append(c)
        if market or done:
            self.ahead_mismatched += 1
            logger.warning("alert_engine: bars evaluated ahead of their closing trades differ from the ones those "
                           "trades closed (%d unexpected, %d not closed); the unexpected ones are evaluated now",
                           len(market), len(done))

    def _staged_for(self, pairs: list[tuple[str, str]]) -> _Staged | None:
        """The commits ``_speculate`` built for these pairs' closes, as one, when each still holds: its speculations
        are the ones the close will take (``core.AlertEngine.holds``) and the cooldowns and last-fired times it was
        built on are unchanged. None when a pair has none (its bars are then evaluated first, as usual)."""
        engine, specs = self.engine, self._specs
        parts = []
        for pair in pairs:
            got = self._staged.pop(pair, None)
            if got is None:
                return None
            made, staged = got
            for spec in made:
                c = spec.candle
                if specs.get((c.exchange, c.symbol, c.timeframe)) is not spec or not engine.holds(spec):
                    return None
            if any(self._fired_basis(fp) != basis for fp, basis in staged.basis.items()):
                return None
            parts.append(staged)
        if len(parts) == 1:
            return parts[0]
        merged = _Staged([], [], {}, [], [], [], 0, {})
        for part in parts:
            merged.fires += part.fires
            merged.predicted += part.predicted
            merged.touched.update(part.touched)
            merged.fire_keys += part.fire_keys
            merged.fire_args += part.fire_args
            merged.row_args += part.row_args
            merged.rows += part.rows
        return merged

    async def _sort(self, entries: list, market: list, later: list, fires: list[core.Fire],
                    touched: set[tuple[str, str]]) -> None:
        """Route a batch's entries: trades entries to the fast-close replicas (the bars they close to ``market``, their
        pairs to ``touched``) and to tick-level rules (their fires to ``fires``); candle_builder's candles and tickers
        to ``later`` (after the bars closed here: a bar closed here is evaluated before candle_builder's candle of it
        is compared with it)."""
        fast = self.fast
        fast_tfs, tick_pairs = self._fast_tfs, self._tick_pairs
        for entry in entries:
            value = entry.value
            kind = type(value)
            if kind is TradeBatch or kind is Watermark or kind is GapMarker:
                pair = (value.exchange, value.symbol)
                tfs = fast_tfs.get(pair)
                if tfs is not None and fast is not None and (pair in fast.replicas
                                                             or await fast.sync(pair, entry.id)):
                    market += fast.apply(pair, entry.id, value, tfs)
                    touched.add(pair)
                if kind is TradeBatch and pair in tick_pairs:  # tick-level rules see each trade as it comes
                    fires.extend(self.engine.on_trades(value.exchange, value.symbol, value.trades))
            elif kind is Candle:
                if not value.closed or fast is None or fast.confirm(value):
                    later.append(value)
            elif kind is Ticker:
                later.append(value)

    async def publish(self, fires: list[core.Fire], batch: Batch | None = None) -> list[int]:
        """Gate and publish; returns the gate's answers (1 published, 0 duplicate, -1 cooling down).

        One script call (``_COMMIT``) gates every fire, writes the touched fingerprints' RULE_STATE rows and, with
        ``batch``, its XACKs; on the consumer's read connection its next XREADGROUP goes out in the same write.
        """
        return await self._finish_commit(await self._send_commit(fires, batch))

    async def _send_commit(self, fires: list[core.Fire], batch: Batch | None = None) -> _Commit:
        """The first half of ``publish``: the fires' predicted effects applied, the commit sent (with ``batch``'s
        XACKs and read-ahead unless it was acked already); ``_finish_commit`` takes its answer. Between the two the
        caller may work while Redis runs it (``_handle_ahead``)."""
        staged = self._stage(fires)
        saved = self._apply_predicted(staged)
        return await self._send_staged(staged, saved, batch)

    def _stage(self, fires: list[core.Fire], statuses: dict[str, core.RuleStatus] | None = None) -> _Staged:
        """A commit of ``fires``, built without changing anything: each fire's answer predicted from this engine's
        own cooldown knowledge, and the RULE_STATE rows of the fingerprints they touch as they will be once those
        answers' effects are applied (``_apply_predicted``). ``statuses``: the rules' statuses to build the rows from
        where the engine's are not current yet (a speculation's, staged before its bar closed)."""
        until: dict[str, int | None] = {}  # per fingerprint, as the predicted effects leave them
        last: dict[str, int | None] = {}
        basis: dict[str, tuple[int | None, int | None]] = {}
        predicted: list[int] = []
        touched: dict[str, core.Fire] = {}
        fire_keys: list[Any] = []
        fire_args: list[Any] = []
        for f in fires:
            fp = f.fingerprint
            if fp not in basis:
                basis[fp] = self._fired_basis(fp, statuses)
                until[fp], last[fp] = basis[fp]
            u = until[fp]
            p = -1 if f.cooldown_ms and u is not None and (u < 0 or f.now_ms < u) else 1
            predicted.append(p)
            if p == 1:  # what _apply_published will do
                if f.cooldown_ms:
                    until[fp] = -1 if f.cooldown_ms < 0 else f.now_ms + f.cooldown_ms
                if f.alert.state == "firing":
                    last[fp] = f.now_ms
            touched[fp] = f
            fire_keys += (streams.alert_fired(f.alert.id), streams.alert_cooldown(fp))
            fire_args += (f.packed or f.alert.encode(), f.now_ms, f.cooldown_ms, fp, 1 if p == 1 else 0)
        rows = self._state_rows(touched, until, last, statuses)
        row_args: list[Any] = []
        for fp, row in rows.items():
            row_args += (fp, row)
        return _Staged(fires, predicted, touched, fire_keys, fire_args, row_args, len(rows), basis)

    def _status(self, fp: str, statuses: dict[str, core.RuleStatus] | None = None) -> core.RuleStatus | None:
        """``fp``'s rule status: from ``statuses`` (a speculation's) where it has one, else the engine's."""
        st = statuses.get(fp) if statuses is not None else None
        return st if st is not None else self.engine.status.get(fp)

    def _fired_basis(self, fp: str,
                     statuses: dict[str, core.RuleStatus] | None = None) -> tuple[int | None, int | None]:
        """(cooldown until, last fired) of ``fp`` now: what a fire's predicted answer and effects start from."""
        st = self._status(fp, statuses)
        return self._cooldown_until.get(fp), st.last_fired_ms if st is not None else None

    def _apply_predicted(self, staged: _Staged) -> dict[str, tuple[int | None, int | None]]:
        """Apply the effects of the answers ``staged`` predicts; what they replace (undone where an answer differs)."""
        saved: dict[str, tuple[int | None, int | None]] = {}
        for f, p in zip(staged.fires, staged.predicted, strict=True):
            fp = f.fingerprint
            if fp not in saved:
                saved[fp] = self._fired_basis(fp)
            if p == 1:
                self._apply_published(f)
        return saved

    async def _send_staged(self, staged: _Staged, saved: dict[str, tuple[int | None, int | None]],
                           batch: Batch | None) -> _Commit:
        """Send ``staged`` (with ``batch``'s XACKs and read-ahead unless it was acked already)."""
        if batch is not None and batch.acked:
            batch = None
        s = self.settings
        keys: list[Any] = [streams.ALERTS, streams.ALERT_HISTORY, streams.RULE_STATE, *staged.fire_keys]
        args: list[Any] = [streams.CHANNEL_ALERTS, s.alerts_maxlen, s.history_maxlen, s.fired_ttl_s * 1000,
                           batch.group if batch is not None else "", len(staged.fires), staged.rows, 0,
                           *staged.fire_args, *staged.row_args]
        if batch is not None:
            groups = 0
            for stream, ids in batch.ids_by_stream().items():
                for i in range(0, len(ids), _ACK_CHUNK):
                    chunk = ids[i:i + _ACK_CHUNK]
                    keys.append(stream)
                    args += (len(chunk), *chunk)
                    groups += 1
            args[7] = groups
        async with self.bus.pipeline() as pipe:
            pipe.execute_command("EVALSHA", self._commit_sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
        return _Commit(staged.fires, staged.predicted, saved, staged.touched, keys, args, batch, replies)

    async def _finish_commit(self, c: _Commit) -> list[int]:
        """The second half of ``publish``: the commit's answers taken, and the effects of the fires predicted wrong
        (a replay, another replica's cooldown) redone with them."""
        fires, predicted, saved, touched, batch = c.fires, c.predicted, c.saved, c.touched, c.batch
        (reply,) = c.replies
        if isinstance(reply, redis_errors.NoScriptError):
            # a restarted or flushed Redis: the script never ran, nothing was written or acked. EVAL runs it (and
            # caches it for the next EVALSHA)
            reply = await self.redis.execute_command("EVAL", _COMMIT, len(c.keys), *c.keys, *c.args)
        elif isinstance(reply, Exception):
            raise reply
        answers = [int(a) for a in reply]
        if batch is not None:
            batch.acked = True
        status = self.engine.status
        cooldown_until = self._cooldown_until
        wrong = {f.fingerprint for f, p, a in zip(fires, predicted, answers, strict=True) if (a == 1) != (p == 1)}
        if wrong:  # replay or another replica's cooldown: redo those fingerprints' effects with the real answers
            for fp in wrong:
                until, last_fired = saved[fp]
                if until is None:
                    cooldown_until.pop(fp, None)
                else:
                    cooldown_until[fp] = until
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
        return answers

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

    def _state_rows(self, touched: dict[str, core.Fire], until: dict[str, int | None] | None = None,
                    last_fired: dict[str, int | None] | None = None,
                    statuses: dict[str, core.RuleStatus] | None = None) -> dict[str, bytes]:
        """Packed RULE_STATE rows of the fingerprints a batch touched (cooldown as this engine knows it: no reads).
        ``until`` / ``last_fired`` (per fingerprint) and ``statuses`` stand in for the engine's own where given."""
        by_name = self.ruleset.by_name()  # only the touched fingerprints' rows (status_rows() builds every one)
        rows: dict[str, bytes] = {}
        for fp, f in touched.items():
            st = self._status(fp, statuses)
            if st is not None:
                u = until[fp] if until is not None else self._cooldown_until.get(fp)
                row = {**self._state_row(st.as_dict(), None if u is None else str(u).encode(), by_name),
                       "last_alert_id": f.alert.id}
                if last_fired is not None:
                    row["last_fired"] = last_fired[fp]
                rows[fp] = pack(row)
        return rows
