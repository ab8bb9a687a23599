"""The end of a chaos run: everything ``verify`` compares, gathered into the report, the totals that decide it, and
the sabotage that shows the comparison catches a lost or doubled alert and a doubled trade."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from redis.asyncio import Redis

from shared.bus import FIELD
from shared.errors import DecodeError
from shared.schemas import Alert
from tests.support.chaos.inject import INJECTED_ALERT_PREFIX, Injector
from tests.support.chaos.layout import Layout, Pair, delivery_records
from tests.support.chaos.progress import Probe, wait_for
from tests.support.chaos.sources import TARGETS, Source
from tests.support.chaos.verify import (compare_alerts, compare_candles, compare_trades, read_entries, read_jsonl,
                                        reference_candles, series_of, trades_of, xrange_all)


def delivered(jsonl: Path, hook) -> dict[str, list[dict]]:
    """What each sink got: the JSONL file's lines; the webhook's alerts as a receiver honouring Idempotency-Key
    processed them (``webhook``) and as they came on the wire (``webhook_raw``, repeats of a key included)."""
    return {"jsonl": read_jsonl(jsonl),
            "webhook": [a for body in hook.delivered() for a in body["alerts"]],
            "webhook_raw": [a for body in hook.raw_delivered() for a in body["alerts"]]}


def expected_alerts(bt_dirs: dict[Pair, Path]) -> list[dict]:
    return [a for d in bt_dirs.values() for a in read_jsonl(d / "alerts.jsonl")]


def _alert(raw: bytes) -> Alert | None:
    try:
        return Alert.decode(raw)
    except DecodeError:
        return None


def backtest_timeframes(out: Path) -> list[str]:
    return sorted(p.stem.removeprefix("candles_") for p in out.glob("candles_*.csv"))


async def everything(redis: Redis, names: Layout, srcs: list[Source], refs: dict, bt_dirs: dict[Pair, Path],
                     jsonl: Path, hook, injector: Injector) -> dict:
    skip: dict[str, set[str]] = {}
    for i in injector.done:  # entry ids are unique per stream only
        skip.setdefault(i.stream, set()).add(i.entry_id)
    trades_entries = {s: await read_entries(redis, s, skip.get(s, set())) for s in names.trades.values()}
    candle_entries = {s: await read_entries(redis, s, skip.get(s, set())) for s in names.candles.values()}
    by_series = series_of(candle_entries)
    trades, candles = {}, {}
    for src in srcs:
        trades[str(src.pair)] = await asyncio.to_thread(compare_trades, refs[src.pair],
                                                        trades_of(trades_entries, src.pair))
        built = {tf for (ex, sym, tf) in by_series if (ex, sym) == (src.pair.exchange, src.pair.symbol)}
        for tf in sorted(built | set(backtest_timeframes(bt_dirs[src.pair]))):
            key = (src.pair.exchange, src.pair.symbol, tf)
            candles[f"{src.pair} {tf}"] = await asyncio.to_thread(
                compare_candles, reference_candles(refs[src.pair], tf), by_series.get(key, []))
    foreign = {s: e for s, e in by_series.items() if not s[1]}  # undecodable candle entries not injected by us
    sinks = delivered(jsonl, hook)
    alerts = compare_alerts(expected_alerts(bt_dirs), sinks)
    # The notifier alone: what it delivered against what the engine published (right or wrong), exactly once.
    published = [a.model_dump(mode="json") for stream in names.alert_streams
                 for _, raw in await read_entries(redis, stream, set())
                 if (a := _alert(raw)) is not None and not a.id.startswith(INJECTED_ALERT_PREFIX)]
    alerts["vs_published"] = compare_alerts(published, {k: v for k, v in sinks.items() if k != "webhook_raw"})
    alerts["injected_delivered"] = sorted({a["id"] for recs in sinks.values() for a in recs
                                           if a["id"].startswith(INJECTED_ALERT_PREFIX)})
    return {"trades": trades, "candles": candles, "alerts": alerts,
            "injected": await _injected(redis, names, injector),
            "foreign_undecodable_candles": sum(len(e) for e in foreign.values()),
            "totals": totals(trades, candles, alerts)}


async def _injected(redis: Redis, names: Layout, injector: Injector) -> dict:
    """What became of each injected entry: named on a dead-letter stream (by the group that read it), read by no
    group at all (a stream nothing consumes in this run), or read and taken as valid (``accepted``: a defect)."""
    named: Counter = Counter()
    sizes = {}
    for stream in names.dead_letters:
        sizes[stream] = await redis.memory_usage(stream) or 0
        for _, fields in await xrange_all(redis, stream):
            named[(fields.get(b"source", b"").decode(errors="replace"),
                   fields.get(b"id", b"").decode(errors="replace"))] += 1
    probe_groups = {}
    for stream in {i.stream for i in injector.done}:
        probe_groups[stream] = await redis.xinfo_groups(stream) if await redis.exists(stream) else []
    accepted, unread = [], []
    for i in injector.done:
        if (i.stream, i.entry_id) in named:
            continue
        (accepted if probe_groups[i.stream] else unread).append(f"{i.stream_kind}/{i.kind} {i.stream} {i.entry_id}")
    return {"entries": len(injector.done),
            "by_kind": dict(Counter(f"{i.stream_kind}/{i.kind}" for i in injector.done)),
            "dead_lettered": sum(1 for i in injector.done if (i.stream, i.entry_id) in named),
            "dead_letter_records": sum(named[(i.stream, i.entry_id)] for i in injector.done),
            "accepted": accepted, "unread": unread, "dead_letter_bytes": sizes}


def totals(trades: dict, candles: dict, alerts: dict) -> dict:
    t = list(trades.values())
    c = list(candles.values())
    sinks = [alerts["jsonl"], alerts["webhook"]]
    return {
        "trades_expected": sum(x["expected"] for x in t), "trades_missing": sum(x["missing"] for x in t),
        "trades_doubled": sum(x["doubled"] for x in t), "trades_unexpected": sum(x["unexpected"] for x in t),
        "trades_differing": sum(len(x["differing"]) for x in t), "gap_markers": sum(len(x["gaps"]) for x in t),
        "candles_expected": sum(x["expected"] for x in c), "candles_compared": sum(x["compared"] for x in c),
        "candles_missing": sum(x["missing_count"] for x in c), "candles_extra": sum(x["extra_count"] for x in c),
        "candles_doubled": sum(x["doubled_count"] for x in c), "candles_revised": sum(x["revised"] for x in c),
        "candles_differing": sum(x["differing_count"] for x in c),
        "alerts_expected": alerts["expected"], "alerts_missing": max(s["missing"] for s in sinks),
        "alerts_extra": max(s["extra"] for s in sinks), "alerts_duplicated": max(s["duplicated"] for s in sinks),
        "alerts_differing": max(s["differing"] for s in sinks),
        "webhook_raw_repeated_ids": alerts["webhook_raw"]["duplicated"],  # on the wire; the receiver dedups them
        "alerts_published": alerts["vs_published"]["expected"],
        "notifier_missing": max(alerts["vs_published"][s]["missing"] for s in ("jsonl", "webhook")),
        "notifier_extra": max(alerts["vs_published"][s]["extra"] for s in ("jsonl", "webhook")),
        "notifier_duplicated": max(alerts["vs_published"][s]["duplicated"] for s in ("jsonl", "webhook")),
        "notifier_differing": max(alerts["vs_published"][s]["differing"] for s in ("jsonl", "webhook")),
    }


def ok(report: dict) -> bool:
    """The run passes: sources ended, everything settled, nothing crashed or stayed down, no injected entry was
    taken for valid, and every count of something lost, doubled, extra or different is 0."""
    if not (report.get("sources_ended") and report.get("settled")) or report.get("crashes"):
        return False
    if report.get("injected", {}).get("accepted") or report.get("alerts", {}).get("injected_delivered"):
        return False
    if any(r["not_recovered"] for r in report.get("recoveries", {}).values()):
        return False
    t = report.get("totals", {})
    bad = ("trades_missing", "trades_doubled", "trades_unexpected", "trades_differing", "gap_markers",
           "candles_missing", "candles_extra", "candles_doubled", "candles_differing", "alerts_missing",
           "alerts_extra", "alerts_duplicated", "alerts_differing")
    return bool(t) and all(t[k] == 0 for k in bad) and t["candles_compared"] > 0 and t["alerts_expected"] > 0


def _counts(jsonl: Path, hook) -> dict[str, Counter]:
    return {sink: Counter(a["id"] for a in records) for sink, records in delivered(jsonl, hook).items()}


def _changes(before: dict[str, Counter], after: dict[str, Counter]) -> dict:
    """Per sink: ids now delivered more than once that were not before, and ids no longer there."""
    return {sink: {"duplicated_ids": {i: n for i, n in after[sink].items() if n > 1 and before[sink][i] < n},
                   "missing_ids": sorted(i for i in before[sink] if not after[sink][i])} for sink in before}


async def sabotage(redis: Redis, names: Layout, srcs: list[Source], refs: dict, bt_dirs: dict[Pair, Path],
                   jsonl: Path, hook, probe: Probe) -> dict:
    """Break things a defect would, on the finished run, and compare again: (1) an alert re-published with its
    notifier records in place: skipped; (2) re-published after its records are deleted (a dedup that failed):
    delivered twice; (3) a delivered alert's line deleted from the JSONL file: missing there; (4) a trades entry
    written twice: its trades doubled. Returns what was done and what the comparison found changed."""
    before = _counts(jsonl, hook)
    lines = read_jsonl(jsonl)
    twice, lost = lines[0], lines[-1]
    raw = Alert.model_validate(twice).encode()
    await redis.xadd(names.alerts, {FIELD: raw})  # records intact: the notifier must skip it
    await wait_for(probe.all_caught_up, 30)
    skipped = _changes(before, _counts(jsonl, hook))
    await redis.delete(*delivery_records(twice["id"], TARGETS))
    await redis.xadd(names.alerts, {FIELD: raw})
    await wait_for(lambda: _delivered_again(jsonl, twice["id"]), 30)
    await wait_for(probe.all_caught_up, 30)
    jsonl.write_text("".join(line + "\n" for line in jsonl.read_text().splitlines()
                             if f'"id":"{lost["id"]}"' not in line.replace(" ", "")))
    pair = srcs[0].pair

    async def pair_entries() -> list:
        return trades_of({s: await read_entries(redis, s, set()) for s in names.trades.values()}, pair)
    entries = await pair_entries()
    trades_before = compare_trades(refs[pair], entries)["doubled"]
    copied = next((eid, data) for eid, data in entries if compare_trades(refs[pair], [(eid, data)])["published"])
    await redis.xadd(names.trades[pair], {FIELD: copied[1]})
    return {"records_deleted_and_republished": twice["id"], "jsonl_line_deleted": lost["id"],
            "found_after_republish": skipped, "found": _changes(before, _counts(jsonl, hook)),
            "trades_entry_copied": copied[0], "trades_in_entry": compare_trades(refs[pair], [copied])["published"],
            "found_trades_doubled": compare_trades(refs[pair], await pair_entries())["doubled"] - trades_before}


async def _delivered_again(jsonl: Path, alert_id: str) -> bool:
    return sum(1 for a in read_jsonl(jsonl) if a["id"] == alert_id) >= 2
