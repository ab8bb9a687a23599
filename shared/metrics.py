"""Prometheus metrics of every service, defined in one place, and the per-process HTTP endpoint.

Every figure an operator's Prometheus scrapes is defined here (``prometheus_client``: names end in ``_total`` for
counters and ``_seconds`` for times, base units). A service touches them at stable points with one line each, e.g.
``metrics.TRADES_IN.labels(exchange, metrics.symbol_label(symbol)).inc(n)`` where Redis acknowledged a write.

Label cardinality is bounded: no per-alert-id labels; ``symbol`` (and a consumer's ``stream``) is the real name only
with ``metrics_per_symbol: true`` (else ``all``); ``rule`` is one of the configured rules; ``timeframe``, ``channel``,
``severity``, ``exchange`` come from the settings. Replicas are told apart by Prometheus' own ``instance`` target
label (each process has its own endpoint); ``service`` tells apart the services of one process (``sentinel up``).

``serve(settings)`` starts the endpoint when ``metrics_port`` is set (env ``SENTINEL_METRICS_PORT``; unset or 0 = off),
on ``metrics_host`` (default 127.0.0.1; 0.0.0.0 in containers). The API also serves ``/metrics`` on its own port.
Each heartbeat writes its service's totals, read from these same counters (``snapshot``), to Redis (``beat``);
``GET /status`` sums them over live replicas (``pipeline_figures``): the dashboard's status strip and ``sentinel
watch`` show the figures Prometheus scrapes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from shared import streams
from shared.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "exposition", "serve", "snapshot"]

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double what is exposed and nobody graphs them

#: The ``symbol`` / ``stream`` label value when per-symbol labels are off.
ALL = "all"
_per_symbol = False

# ---- market_feed ---------------------------------------------------------------------------------------------------
TRADES_IN = Counter("sentinel_feed_trades", "Trades market_feed published (Redis acknowledged the write).",
                    ["exchange", "symbol"])
TRADES_BACKFILLED = Counter("sentinel_feed_backfilled_trades", "Trades fetched by REST after a reconnect or a jump.",
                            ["exchange", "symbol"])
GAPS = Counter("sentinel_feed_gaps", "Gap markers published: trades that could not be recovered.",
               ["exchange", "symbol"])
RECONNECTS = Counter("sentinel_feed_reconnects", "Websocket reconnects (errors, server closes, silence).",
                     ["exchange"])
FEEDS_SILENT = Counter("sentinel_feed_silent", "A trades, ticker or book stream silent past its timeout.",
                       ["exchange", "stream"])
# ---- candle_builder ------------------------------------------------------------------------------------------------
CANDLES_CLOSED = Counter("sentinel_candles_closed", "Closed candles written.", ["timeframe"])
CANDLES_REVISED = Counter("sentinel_candles_revised", "Revisions of closed candles written (late trades, gaps).",
                          ["timeframe"])
LATE_TRADES = Counter("sentinel_late_trades", "Trades older than their bucket: revising a closed candle, or dropped "
                      "past the lateness window.", ["outcome"])
# ---- alert_engine --------------------------------------------------------------------------------------------------
RULES_EVALUATED = Counter("sentinel_rules_evaluated", "Evaluations of a rule on a closed bar.")
ALERTS_FIRED = Counter("sentinel_alerts_fired", "Alerts published (after the id and cooldown gates).",
                       ["rule", "severity", "state"])
EVALUATION_SECONDS = Histogram("sentinel_rule_evaluation_seconds", "Evaluating one batch of candles and tickers.",
                               buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
# ---- notifier ------------------------------------------------------------------------------------------------------
NOTIFICATIONS_SENT = Counter("sentinel_notifications_sent", "Alerts delivered, per channel.", ["channel"])
NOTIFICATIONS_RETRIED = Counter("sentinel_notifications_retried", "Send attempts repeated after a failure.",
                                ["channel"])
NOTIFICATIONS_DEAD = Counter("sentinel_notifications_dead_lettered", "Alerts given up on, per channel.", ["channel"])
DELIVERY_SECONDS = Histogram("sentinel_notification_delivery_latency_seconds",
                             "From the close of the candle that fired the alert to its delivery being recorded.",
                             ["channel"], buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0))
# ---- every service -------------------------------------------------------------------------------------------------
CONSUMER_LAG = Gauge("sentinel_consumer_lag_entries", "Entries of the stream not delivered to the group yet.",
                     ["group", "stream"])
CONSUMER_PENDING = Gauge("sentinel_consumer_pending_entries", "Entries delivered to the group and not acked yet.",
                         ["group", "stream"])
DEAD_LETTERS = Counter("sentinel_dead_letters", "Entries a consumer dead-lettered (undecodable or kept failing).",
                       ["group"])
REDIS_SECONDS = Histogram("sentinel_redis_roundtrip_seconds", "PING round trip to Redis, sampled by the heartbeat.",
                          ["service"], buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                0.1, 0.25, 1.0))
REDIS_ERRORS = Counter("sentinel_redis_errors", "Redis commands that failed because Redis was unreachable.",
                       ["service"])
SERVICE_UP = Gauge("sentinel_service_up", "1 for each service this process runs.", ["service"])


def configure(*, per_symbol: bool) -> None:
    """Whether ``symbol`` and ``stream`` labels carry real names (``metrics_per_symbol``)."""
    global _per_symbol
    _per_symbol = per_symbol


def symbol_label(name: str) -> str:
    """``name`` when per-symbol labels are on, else ``all`` (bounded cardinality with thousands of pairs)."""
    return name if _per_symbol else ALL


def count_trades(exchange: str, per_symbol: dict[str, int]) -> None:
    """market_feed's write of ``per_symbol`` trades (symbol -> count) was acknowledged by Redis."""
    for symbol, n in per_symbol.items():
        TRADES_IN.labels(exchange, symbol_label(symbol)).inc(n)


class _Emitted(Protocol):
    revision: int


def count_candles(emitted: Iterable[tuple[str, _Emitted]]) -> None:
    """candle_builder wrote ``emitted`` ((timeframe, bar) pairs): closed ones and revisions, per timeframe."""
    for tf, bar in emitted:
        (CANDLES_REVISED if bar.revision > 0 else CANDLES_CLOSED).labels(tf).inc()


class _Builder(Protocol):
    late_revised: int
    late_dropped: int


class _Series(Protocol):
    builder: _Builder
    late_counted: tuple[int, int]


def count_late(series: _Series) -> None:
    """Late trades the series' builder met since the last call (its totals are restored with its state, so only
    the growth since ``late_counted`` counts)."""
    b = series.builder
    revised, dropped = series.late_counted
    if b.late_revised == revised and b.late_dropped == dropped:  # the usual call: nothing late
        return
    LATE_TRADES.labels("revised").inc(max(0, b.late_revised - revised))
    LATE_TRADES.labels("dropped").inc(max(0, b.late_dropped - dropped))
    series.late_counted = (b.late_revised, b.late_dropped)


class _Alert(Protocol):
    ts: int
    timeframe: str | None


def count_delivery(channel: str, alerts: Sequence[_Alert], delivered: bool, attempts: int) -> None:
    """The notifier recorded ``alerts`` for ``channel``: delivered (latency from each candle's close) or dead."""
    from shared.timeframes import timeframe_ms

    if attempts > 1:
        NOTIFICATIONS_RETRIED.labels(channel).inc(attempts - 1)
    if not delivered:
        NOTIFICATIONS_DEAD.labels(channel).inc(len(alerts))
        return
    NOTIFICATIONS_SENT.labels(channel).inc(len(alerts))
    now_ms = time.time() * 1000
    latency = DELIVERY_SECONDS.labels(channel)
    for a in alerts:
        close = a.ts + (timeframe_ms(a.timeframe) if a.timeframe else 0)
        latency.observe(max(0.0, now_ms - close) / 1000)


async def sample_consumer(redis: Any, group: str, stream_names: Sequence[str]) -> None:
    """Lag and pending of ``group`` on its streams (one XINFO GROUPS per stream, pipelined); called by the consumer
    every ``claim_every_s``. Summed into ``stream="all"`` unless per-symbol labels are on. Never raises."""
    if not stream_names:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for name in stream_names:
                pipe.xinfo_groups(name)
            replies = await pipe.execute(raise_on_error=False)
    except Exception as exc:  # a sample must never stop a consumer
        logger.debug("metrics: sampling %s failed: %s", group, exc)
        return
    lag: dict[str, float] = {}
    pending: dict[str, float] = {}
    for name, reply in zip(stream_names, replies):
        if isinstance(reply, Exception):
            continue
        for info in reply:
            if _text(info.get("name")) == group:
                label = symbol_label(name)
                lag[label] = lag.get(label, 0) + (info.get("lag") or 0)
                pending[label] = pending.get(label, 0) + (info.get("pending") or 0)
    for label in lag:
        CONSUMER_LAG.labels(group, label).set(lag[label])
        CONSUMER_PENDING.labels(group, label).set(pending[label])


_COUNT_AFTER = "return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))"


async def sample_offsets(redis: Any, group: str, offsets: dict[str, bytes], cap: int = 10_000) -> None:
    """Lag of a group that keeps its position as offsets (a partition worker's ``part_state``, no consumer group):
    the entries after each offset, counted inside Redis up to ``cap`` per stream; nothing is ever pending. Never
    raises."""
    lag: dict[str, float] = {}
    for name, offset in offsets.items():
        try:
            n = int(await redis.eval(_COUNT_AFTER, 1, name, offset, cap))
        except Exception as exc:  # a sample must never stop a worker
            logger.debug("metrics: sampling %s failed: %s", group, exc)
            continue
        label = symbol_label(name)
        lag[label] = lag.get(label, 0) + n
    for label in lag:
        CONSUMER_LAG.labels(group, label).set(lag[label])
        CONSUMER_PENDING.labels(group, label).set(0)


async def ping(redis: Any, service: str) -> None:
    """One PING timed into ``REDIS_SECONDS`` (the heartbeat's sample); a failure counts in ``REDIS_ERRORS``."""
    start = time.perf_counter()
    try:
        await redis.ping()
    except Exception:
        REDIS_ERRORS.labels(service).inc()
        return
    REDIS_SECONDS.labels(service).observe(time.perf_counter() - start)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---- the endpoint and the figures of /status -------------------------------------------------------------------------

_served: dict[tuple[str, int], Any] = {}


def serve(settings: Any) -> int | None:
    """Start this process's metrics endpoint if ``settings.metrics_port`` is set (once per process and port) and
    apply ``metrics_per_symbol``; the port, or None when off. ConfigError when the port cannot be bound."""
    configure(per_symbol=bool(getattr(settings, "metrics_per_symbol", False)))
    port = getattr(settings, "metrics_port", None)
    if not port:
        return None
    host = getattr(settings, "metrics_host", "127.0.0.1")
    if (host, port) in _served:
        return int(port)
    try:
        _served[(host, port)] = prometheus_client.start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(f"metrics_port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); choose "
                          "another port, or unset SENTINEL_METRICS_PORT to turn the endpoint off") from exc
    logger.info("metrics: http://%s:%d/metrics", host, port)
    return int(port)


def stop_serving() -> None:
    """Close the endpoints ``serve`` started (tests; a process exiting needs nothing)."""
    for server in _served.values():
        with contextlib.suppress(Exception):
            httpd = server[0] if isinstance(server, tuple) else server
            httpd.shutdown()
            httpd.server_close()
    _served.clear()


def exposition() -> bytes:
    """The registry in Prometheus' text format (the API's ``/metrics``)."""
    return generate_latest(REGISTRY)


#: The pipeline's figures, each the sum of one counter over its labels, by the service that counts it.
FIGURES: dict[str, dict[str, Counter]] = {
    "market_feed": {"trades_in": TRADES_IN, "gaps": GAPS, "reconnects": RECONNECTS},
    "candle_builder": {"candles_closed": CANDLES_CLOSED, "candles_revised": CANDLES_REVISED,
                       "late_trades": LATE_TRADES},
    "alert_engine": {"rules_evaluated": RULES_EVALUATED, "alerts_fired": ALERTS_FIRED},
    "notifier": {"notifications_sent": NOTIFICATIONS_SENT, "notifications_dead": NOTIFICATIONS_DEAD},
}
#: Figures that are levels, not totals: summed over replicas, not turned into rates.
LEVELS = ("lag", "pending", "dead_letters")


def _sum(metric: Counter | Gauge, **match: str) -> int:
    return int(sum(s.value for m in metric.collect() for s in m.samples
                   if not s.name.endswith("_created") and all(s.labels.get(k) == v for k, v in match.items())))


def snapshot(service: str) -> dict[str, int]:
    """``service``'s figures as this process counted them: its ``FIGURES`` and its consumer group's lag, pending
    entries and dead letters (the group of a service bears its name)."""
    out = {name: _sum(counter) for name, counter in FIGURES.get(service, {}).items()}
    out.update(lag=_sum(CONSUMER_LAG, group=service), pending=_sum(CONSUMER_PENDING, group=service),
               dead_letters=_sum(DEAD_LETTERS, group=service))
    return out


_INSTANCE = f"{socket.gethostname()}-{os.getpid()}"


async def beat(redis: Any, service: str) -> None:
    """The heartbeat's metrics step: time a PING (``REDIS_SECONDS``) and write ``service``'s ``snapshot`` into
    ``streams.METRICS_FIGURES`` (field ``service|host-pid``), where ``/status`` sums every live replica's."""
    SERVICE_UP.labels(service).set(1)
    await ping(redis, service)
    value = json.dumps({"ts": int(time.time() * 1000), "figures": snapshot(service)}, separators=(",", ":"))
    await redis.hset(streams.METRICS_FIGURES, f"{service}|{_INSTANCE}", value)


async def pipeline_figures(redis: Any, max_age_ms: int = 15_000) -> dict[str, Any]:
    """Every figure summed over the replicas whose last beat is at most ``max_age_ms`` old (older entries, of
    stopped processes, are deleted after an hour); ``services``: live replicas per service."""
    now = int(time.time() * 1000)
    figures = {name: 0 for names in FIGURES.values() for name in names} | {name: 0 for name in LEVELS}
    replicas: dict[str, int] = {}
    gone = []
    for field, raw in (await redis.hgetall(streams.METRICS_FIGURES)).items():
        try:
            entry = json.loads(raw)
            age = now - int(entry["ts"])
        except (ValueError, KeyError, TypeError):
            gone.append(field)
            continue
        if age > 3_600_000:
            gone.append(field)
        if age > max_age_ms:
            continue
        service = _text(field).split("|", 1)[0]
        replicas[service] = replicas.get(service, 0) + 1
        for name, value in entry.get("figures", {}).items():
            if name in figures and isinstance(value, int):
                figures[name] += value
    if gone:
        await redis.hdel(streams.METRICS_FIGURES, *gone)
    return {"ts": now, "figures": figures, "services": replicas}
