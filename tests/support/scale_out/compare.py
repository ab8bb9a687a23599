"""The end of a scale-out run: every comparison gathered into the report, the totals, the verdict.

- trades: each pair's trades in its partition's trades stream against the recording (each id once);
- candles: each series' closed candles (its per-series stream, and the partition's candles stream when candle_builder
  writes one) against pandas' resample of the recording (``chaos.verify.reference_candles``); and each API replica's
  ``GET /candles`` of every series against the same;
- alerts: the webhook receiver (honouring Idempotency-Key), the JSONL file and each API replica's
  ``GET /alerts/history`` against one clean one-process ``sentinel backtest`` of the same files and rules (ids and
  values); the notifier alone against what the engine published."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx

from shared import streams
from shared.errors import DecodeError
from shared.partitions import partition_of
from shared.schemas import Alert, Candle
from tests.support.chaos.layout import Pair
from tests.support.chaos.verify import (compare_alerts, compare_candles, compare_trades, read_entries, read_jsonl,
                                        reference_candles, series_of, trades_of)
from tests.support.scale_out.progress import series_streams
from tests.support.scale_out.sources import live_timeframes


def _alert(raw: bytes) -> dict | None:
    try:
        return Alert.decode(raw).model_dump(mode="json")
    except DecodeError:
        return None


async def api_candles(client: httpx.AsyncClient, base: str, pair: Pair, tf: str) -> list[tuple[str, bytes]]:
    """An API replica's closed candles of one series, as (index, encoded Candle) entries for ``compare_candles``."""
    reply = await client.get(f"{base}/candles/{pair.exchange}/{pair.symbol}/{tf}", params={"limit": 5000})
    if reply.status_code == 404:
        return []
    reply.raise_for_status()
    return [(str(i), Candle.model_validate(c).encode()) for i, c in enumerate(reply.json()["candles"])]


async def api_alerts(client: httpx.AsyncClient, base: str) -> list[dict]:
    """Every alert of an API replica's history (newest first, page by page)."""
    out: list[dict] = []
    cursor = None
    while True:
        params: dict = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        reply = await client.get(f"{base}/alerts/history", params=params)
        reply.raise_for_status()
        body = reply.json()
        out += [item["alert"] for item in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            return out


async def everything(redis, pairs: list[Pair], refs: dict, partitions: int, expected_alerts: list[dict],
                     jsonl: Path, hook, api_bases: list[str]) -> dict:
    parts = {p: partition_of(p.exchange, p.symbol, partitions) for p in pairs}
    trades_entries = {s: await read_entries(redis, s, set()) for s in {streams.part_trades(v) for v in parts.values()}}
    trades = {str(p): await asyncio.to_thread(compare_trades, refs[p], trades_of(trades_entries, p)) for p in pairs}
    part_candles = series_of({s: await read_entries(redis, s, set())
                              for s in {streams.part_candles(v) for v in parts.values()} if await redis.exists(s)})
    candles: dict[str, dict] = {}
    layouts: dict[str, list[str]] = {}
    for p in pairs:
        for tf in live_timeframes(p):
            want = reference_candles(refs[p], tf)
            names = await series_streams(redis, p, tf, partitions)
            layouts[f"{p} {tf}"] = names
            entries = [e for n in names for e in await read_entries(redis, n, set())]
            candles[f"{p} {tf}"] = await asyncio.to_thread(compare_candles, want, entries)
            if part_candles:  # the partition's stream, when candle_builder writes one: the same candles
                got = part_candles.get((p.exchange, p.symbol, tf), [])
                candles[f"{p} {tf} (part_candles)"] = await asyncio.to_thread(compare_candles, want, got)
    sinks = {"jsonl": read_jsonl(jsonl),
             "webhook": [a for body in hook.delivered() for a in body["alerts"]],
             "webhook_raw": [a for body in hook.raw_delivered() for a in body["alerts"]]}
    api: dict = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for i, base in enumerate(api_bases):
            try:
                sinks[f"api{i}"] = await api_alerts(client, base)
                for p in pairs:
                    for tf in live_timeframes(p):
                        got = await api_candles(client, base, p, tf)
                        api[f"api{i} {p} {tf}"] = await asyncio.to_thread(compare_candles,
                                                                          reference_candles(refs[p], tf), got)
            except httpx.HTTPError as exc:
                api[f"api{i} error"] = repr(exc)
    alerts = compare_alerts(expected_alerts, sinks)
    published = [a for part in range(partitions) for _, raw in await read_entries(redis, streams.part_alerts(part), set())
                 if (a := _alert(raw)) is not None]
    alerts["vs_published"] = compare_alerts(published, {k: sinks[k] for k in ("jsonl", "webhook")})
    entries = Counter(a["id"] for a in published)  # the same alert id in two entries: published twice
    alerts["published_entries"] = len(published)
    alerts["published_twice"] = {i: n for i, n in entries.items() if n > 1}
    alerts["by_rule_expected"] = dict(Counter(a["rule"] for a in expected_alerts))
    return {"trades": trades, "candles": candles, "candle_streams": layouts, "api_candles": api, "alerts": alerts,
            "totals": totals(trades, candles, api, alerts, [k for k in sinks if k != "webhook_raw"])}


def totals(trades: dict, candles: dict, api: dict, alerts: dict, sinks: list[str]) -> dict:
    t, c = list(trades.values()), list(candles.values())
    a = [v for v in api.values() if isinstance(v, dict)]
    pub = alerts["vs_published"]
    return {
        "trades_expected": sum(x["expected"] for x in t), "trades_missing": sum(x["missing"] for x in t),
        "trades_doubled": sum(x["doubled"] for x in t), "trades_unexpected": sum(x["unexpected"] for x in t),
        "trades_differing": sum(len(x["differing"]) for x in t),
        "candles_expected": sum(x["expected"] for x in c), "candles_compared": sum(x["compared"] for x in c),
        "candles_missing": sum(x["missing_count"] for x in c), "candles_extra": sum(x["extra_count"] for x in c),
        "candles_doubled": sum(x["doubled_count"] for x in c), "candles_differing": sum(x["differing_count"] for x in c),
        "candles_revised": sum(x["revised"] for x in c),
        "api_candles_compared": sum(x["compared"] for x in a),
        "api_candles_wrong": sum(x["missing_count"] + x["extra_count"] + x["differing_count"] for x in a),
        "api_errors": sum(1 for k in api if k.endswith(" error")),
        "alerts_expected": alerts["expected"],
        "alerts_missing": max(alerts[s]["missing"] for s in sinks),
        "alerts_extra": max(alerts[s]["extra"] for s in sinks),
        "alerts_duplicated": max(alerts[s]["duplicated"] for s in sinks),
        "alerts_differing": max(alerts[s]["differing"] for s in sinks),
        "webhook_raw_repeated_ids": alerts["webhook_raw"]["duplicated"],
        "alerts_published": pub["expected"],
        "alerts_published_twice": len(alerts["published_twice"]),
        "notifier_missing": max(pub[s]["missing"] for s in ("jsonl", "webhook")),
        "notifier_extra": max(pub[s]["extra"] for s in ("jsonl", "webhook")),
        "notifier_duplicated": max(pub[s]["duplicated"] for s in ("jsonl", "webhook")),
    }


EXACT = ("trades_missing", "trades_doubled", "trades_unexpected", "trades_differing", "candles_missing",
         "candles_extra", "candles_doubled", "candles_differing", "api_candles_wrong", "api_errors",
         "alerts_missing", "alerts_extra", "alerts_duplicated", "alerts_differing", "notifier_missing",
         "notifier_extra", "notifier_duplicated")


def ok(report: dict) -> bool:
    """Sources ended, everything settled, no crash, and every count of something lost, doubled, extra or different
    is 0 (with candles, API candles and alerts actually compared)."""
    t = report.get("totals", {})
    if not (report.get("sources_ended") and report.get("settled")) or report.get("crashes") or not t:
        return False
    return (all(t[k] == 0 for k in EXACT) and t["candles_compared"] > 0 and t["api_candles_compared"] > 0
            and t["alerts_expected"] > 0)
