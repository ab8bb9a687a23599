"""Reads behind the API's endpoints: everything the API knows comes from Redis, through the keys of shared.streams."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from shared import alert_streams, streams
from shared.bus import FIELD
from shared.bus import as_str as _s
from shared.candle_series import all_series, series_stream
from shared.errors import DecodeError
from shared.partitions import partition_of
from shared.schemas import SCHEMA_VERSION, Alert, Candle, Ticker, unpack

#: Chunk size of the reverse scans of candle and history streams.
CHUNK = 500


def now_ms() -> int:
    return int(time.time() * 1000)


# ---- rule states ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RuleState:
    fingerprint: str
    rule: str
    exchange: str | None
    symbol: str | None
    timeframe: str | None
    state: str
    last_fired: int | None
    last_alert_id: str | None
    cooldown_left_s: float
    cooldown_forever: bool
    next_eligible: int | None
    extra: dict[str, Any]


_SHOWN = {"rule", "exchange", "symbol", "timeframe", "state", "last_fired", "last_alert_id", "cooldown_until",
          "next_eligible", "v", "k"}


def _decode_state(raw: bytes) -> dict[str, Any]:
    try:
        data = unpack(raw)
    except DecodeError:
        data = None
    if not isinstance(data, dict):
        return {"state": "unknown", "error": "undecodable rule state"}
    return data


async def rule_states(redis: Redis) -> list[RuleState]:
    """Each rule × series the engine keeps state for (every partition's ``streams.part_rule_state``), with its live
    cooldown.

    The engine's cooldown key (``streams.part_alert_cooldown(partition, fingerprint)``) holds the end of the
    cooldown in exchange time (ms; -1 = never again, for ``once`` rules); the time left is counted to it from the wall
    clock (live, exchange time is wall time). The key outlives the cooldown (exchange time may run slower than the
    wall clock).
    """
    raw: dict[str, tuple[int, bytes]] = {}  # fingerprint -> (partition, row)
    for p in range(await alert_streams.partition_count(redis)):
        for k, v in (await redis.hgetall(streams.part_rule_state(p))).items():
            raw[_s(k)] = (p, v)
    fingerprints = sorted(raw)
    async with redis.pipeline(transaction=False) as pipe:
        for fp in fingerprints:
            pipe.get(streams.part_alert_cooldown(raw[fp][0], fp))
        replies = await pipe.execute()
    now = now_ms()
    out: list[RuleState] = []
    for n, fp in enumerate(fingerprints):
        data = _decode_state(raw[fp][1])
        until_raw = replies[n]
        until: int | None = None
        if until_raw is not None:
            with contextlib.suppress(ValueError):
                until = int(until_raw)
        forever = until is not None and until < 0
        left_ms = max(0, until - now) if until is not None and until >= 0 else 0
        last_fired = data.get("last_fired")
        out.append(RuleState(
            fingerprint=fp,
            rule=str(data.get("rule", fp)),
            exchange=data.get("exchange"),
            symbol=data.get("symbol"),
            timeframe=data.get("timeframe"),
            state=str(data.get("state", "unknown")),
            last_fired=last_fired if isinstance(last_fired, int) else None,
            last_alert_id=data.get("last_alert_id"),
            cooldown_left_s=round(left_ms / 1000, 3),
            cooldown_forever=forever,
            next_eligible=until if until is not None and until >= 0 else None,
            extra={k: v for k, v in data.items() if k not in _SHOWN},
        ))
    return out


# ---- alert history -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class HistoryPage:
    items: list[tuple[str, Alert]]
    next_cursor: str | None


async def alert_history(redis: Redis, *, rule: str | None = None, symbol: str | None = None,
                        exchange: str | None = None, start: int | None = None, end: int | None = None,
                        cursor: str | None = None, limit: int = 100, scan_limit: int = 50_000) -> HistoryPage:
    """Alerts newest first from every partition's alerts stream (``shared.alert_streams``: merged by entry id),
    filtered (time range on ``fired_at``, ms, inclusive).

    ``cursor`` is the position of the last item of the previous page (``<ms>-<seq>-<partition>``; a bare stream id
    continues before that id); at most ``scan_limit`` entries are read per call, so a selective filter over a long
    history returns a short page with a cursor to continue from.
    """
    after: tuple[tuple[int, int], int] | None = None
    if cursor is not None:
        ms, seq, *part = (int(x) for x in cursor.split("-"))
        after = ((ms, seq), part[0] if part else -1)
    items: list[tuple[str, Alert]] = []
    scanned = 0
    last: str | None = None
    log = alert_streams.merged(redis, await alert_streams.partition_count(redis), newest_first=True, after=after,
                               chunk=min(CHUNK, max(limit, 20)))
    async for (ms, seq), partition, _, fields in log:
        if len(items) == limit or scanned == scan_limit:
            return HistoryPage(items, last)  # (something older is there)
        scanned += 1
        last = f"{ms}-{seq}-{partition}"
        data = peek(fields.get(FIELD, b""), "alert")
        if data is None:
            continue
        fired = data.get("fired_at")
        if not ((rule is None or data.get("rule") == rule) and (symbol is None or data.get("symbol") == symbol)
                and (exchange is None or data.get("exchange") == exchange)
                and (start is None or (isinstance(fired, int) and fired >= start))
                and (end is None or (isinstance(fired, int) and fired <= end))):
            continue
        try:  # only what matches pays for full validation
            alert = Alert.model_validate(data)
        except ValidationError:
            continue
        items.append((last, alert))
    return HistoryPage(items, None)


# ---- market data ---------------------------------------------------------------------------------------------------


def peek(raw: bytes, kind: str) -> dict[str, Any] | None:
    """The message map of one stream entry (``kind`` instead of ``v``/``k``) without model validation; None if it
    is not a ``kind`` message of this schema version. Fields are as ``model_dump(mode="json")`` wrote them."""
    try:
        data = unpack(raw)
    except DecodeError:
        return None
    if not isinstance(data, dict) or data.get("v") != SCHEMA_VERSION or data.get("k") != kind:
        return None
    data.pop("v")
    data["kind"] = data.pop("k")
    return data


_CANDLE_FIELDS = frozenset(Candle.model_fields)


async def closed_candle_maps(redis: Redis, exchange: str, symbol: str, timeframe: str, partitions: int, *,
                             limit: int, since: int | None = None) -> list[dict[str, Any]]:
    """Closed candles as JSON-ready maps (decimals as strings), ascending by ``ts``, the latest revision of each.

    Without ``since``: the last ``limit`` buckets. With ``since``: the first ``limit`` buckets starting at or after it.
    The maps are the candle_builder's own ``Candle.encode`` output, so they are returned without re-validation
    (10× cheaper); an entry lacking a field of the schema is skipped.
    """
    stream = series_stream(exchange, symbol, timeframe, partitions)
    by_ts: dict[int, dict[str, Any]] = {}
    top = "+"
    while True:
        chunk = await redis.xrevrange(stream, max=top, min="-", count=CHUNK)
        oldest: int | None = None
        for entry_id, fields in chunk:
            top = f"({_s(entry_id)}"
            data = peek(fields.get(FIELD, b""), "candle")
            if data is None or not _CANDLE_FIELDS.issubset(data):
                continue
            ts, revision = data["ts"], data["revision"]
            if not isinstance(ts, int) or not isinstance(revision, int):
                continue
            oldest = ts if oldest is None else min(oldest, ts)
            if data["closed"] is not True:
                continue
            known = by_ts.get(ts)
            if known is None or revision > known["revision"]:
                by_ts[ts] = data
        if len(chunk) < CHUNK:
            break
        if since is None and len(by_ts) >= limit:
            break
        if since is not None and oldest is not None and oldest < since:
            break
    ordered = [by_ts[ts] for ts in sorted(by_ts)]
    if since is None:
        return ordered[-limit:]
    return [c for c in ordered if c["ts"] >= since][:limit]


async def closed_candles(redis: Redis, exchange: str, symbol: str, timeframe: str, partitions: int, *, limit: int,
                         since: int | None = None) -> list[Candle]:
    """``closed_candle_maps`` as validated ``Candle`` objects."""
    out = []
    for data in await closed_candle_maps(redis, exchange, symbol, timeframe, partitions, limit=limit, since=since):
        try:
            out.append(Candle.model_validate(data))
        except ValidationError:
            continue
    return out


async def live_candle(redis: Redis, exchange: str, symbol: str, timeframe: str, partitions: int) -> Candle | None:
    """The series' latest in-progress candle (its field of its partition's ``part_live_latest``), if any."""
    raw = await redis.hget(streams.part_live_latest(partition_of(exchange, symbol, partitions)),
                          streams.registry_member(exchange, symbol, timeframe))
    if raw is None:
        return None
    try:
        return Candle.decode(raw)
    except DecodeError:
        return None


#: Newest entries of a partition's tickers stream looked through for one pair's latest ticker.
TICKER_SCAN = 2_000


async def latest_ticker(redis: Redis, exchange: str, symbol: str, partitions: int) -> Ticker | None:
    """The pair's newest ticker among the last ``TICKER_SCAN`` entries of its partition's tickers stream (shared
    with the partition's other pairs), read newest first in pages."""
    stream = streams.part_tickers(partition_of(exchange, symbol, partitions))
    top, seen = "+", 0
    while seen < TICKER_SCAN:
        page = await redis.xrevrange(stream, max=top, count=200)
        for _, fields in page:
            try:
                ticker = Ticker.decode(fields.get(FIELD, b""))
            except DecodeError:
                continue
            if ticker.exchange == exchange and ticker.symbol == symbol:
                return ticker
        if len(page) < 200:
            return None
        seen += len(page)
        top = "(" + _s(page[-1][0])
    return None


def cvd(candles: list[Candle] | list[dict[str, Any]],
        live: Candle | None = None) -> list[tuple[int, Decimal, Decimal]]:
    """(ts, delta, cumulative delta) per candle (models or maps), the in-progress one last when given and newer."""
    rows = [(c["ts"], Decimal(c["buy_volume"]) - Decimal(c["sell_volume"])) if isinstance(c, dict)
            else (c.ts, c.delta) for c in candles]
    if live is not None and (not rows or live.ts > rows[-1][0]):
        rows.append((live.ts, live.delta))
    out: list[tuple[int, Decimal, Decimal]] = []
    total = Decimal(0)
    for ts, delta in rows:
        total += delta
        out.append((ts, delta, total))
    return out


async def series(redis: Redis, partitions: int) -> list[tuple[str, str, str]]:
    """Every (exchange, symbol, timeframe) candle_builder publishes (every partition's registry)."""
    return await all_series(redis, partitions)
