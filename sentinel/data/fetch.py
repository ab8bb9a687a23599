"""``sentinel data fetch``: choose the source, run it with a progress display, say what was done."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from rich.console import Console

from sentinel.data import archives, rest
from sentinel.data.archives import ArchiveJob, FetchResult
from sentinel.data.adapters.http_download import HttpSource
from sentinel.data.plan import DAY_MS, FetchError, day_start_ms, days_between, market_id, unarchived_days
from sentinel.data.progress import FetchProgress

#: Exchange ids whose history comes from Binance's public-data archives by default, and the archive market of each.
ARCHIVE_EXCHANGES = {"binance": "spot", "binanceusdm": "usdm"}
SOURCES = ("auto", "archive", "rest")


@dataclass
class FetchRequest:
    """What to fetch: ``start``..``end`` are UTC days, both included."""

    exchange: str
    symbols: list[str]
    start: date
    end: date
    root: Path
    market: str = "spot"
    source: str = "auto"
    base_url: str = archives.DEFAULT_BASE_URL
    rest_url: str | None = None
    keep_archives: bool = False


def fetch(req: FetchRequest, console: Console | None = None, progress: bool = True,
          today: date | None = None) -> FetchResult:
    """Fetch the trades ``req`` asks for into ``req.root``; FetchError (one line, with what to do) when nothing can
    start, else a FetchResult listing what was written, what was already there, and what is missing or failed."""
    if req.end < req.start:
        raise FetchError(f"--to {req.end} is before --from {req.start}")
    if req.source not in SOURCES:
        raise FetchError(f"--source {req.source!r}: expected one of {', '.join(SOURCES)}")
    if not req.symbols:
        raise FetchError("name at least one symbol, e.g. BTCUSDT or BTC/USDT")
    today = today or datetime.now(UTC).date()
    use_archives = req.source == "archive" or (req.source == "auto" and req.exchange in ARCHIVE_EXCHANGES)
    if use_archives and req.exchange not in ARCHIVE_EXCHANGES:
        raise FetchError(f"--source archive: only Binance publishes trade archives ({', '.join(ARCHIVE_EXCHANGES)}); "
                         f"use --source rest for {req.exchange!r}")
    with FetchProgress(console, enabled=progress) as bar:
        if use_archives:
            market = ARCHIVE_EXCHANGES[req.exchange] if req.exchange != "binance" else req.market
            result = asyncio.run(_archives(req, market, bar, today))
        else:
            result = asyncio.run(_rest(req, bar))
    return result


async def _archives(req: FetchRequest, market: str, bar: FetchProgress, today: date) -> FetchResult:
    async with HttpSource(req.base_url) as source:
        job = ArchiveJob(source, req.root, market, bar, keep_archives=req.keep_archives)
        for symbol in req.symbols:
            await archives.fetch_symbol(job, market_id(symbol), req.start, req.end, today)
    late = unarchived_days(req.start, req.end, today)
    if late:
        job.result.notes.append(f"{late[0]}..{late[-1]}: not archived yet (Binance publishes a day's file the day "
                                f"after); `--source rest` fetches them through the exchange's API")
    return job.result


async def _rest(req: FetchRequest, bar: FetchProgress) -> FetchResult:
    from sentinel.data.adapters.ccxt_rest import RestTrades

    result = FetchResult()
    folder = req.root / req.exchange
    folder.mkdir(parents=True, exist_ok=True)
    async with RestTrades(req.exchange, req.rest_url) as source:
        for symbol in await source.resolve(req.symbols):
            files = rest.DayFiles(folder, market_id(symbol))
            runs = files.runs(req.start, req.end)
            result.already.extend(files.final(d) for d in _days(req) if files.final(d).exists())
            total = sum(day_start_ms(b) + DAY_MS - day_start_ms(a) for a, b in runs)
            task = bar.item_task(f"{req.exchange} {symbol}", total=max(total, 1))
            done_before = 0
            for first, last in runs:
                span = day_start_ms(last) + DAY_MS - day_start_ms(first)

                def moved(done: int, _total: int, trades: int, base: int = done_before, before: int = result.trades
                          ) -> None:
                    bar.set_completed(task, base + done, f"{req.exchange} {symbol}: {before + trades:,} trades")

                stats = await rest.fetch_run(source, symbol, files, first, last, on_progress=moved)
                done_before += span
                result.trades += stats.trades
                bar.set_completed(task, done_before, f"{req.exchange} {symbol}: {result.trades:,} trades")
                result.notes.extend(stats.notes)
            result.written.extend(files.written)
            open_parts = [files.part(d) for d in _days(req) if files.part(d).exists()]
            if open_parts:
                result.notes.append(f"{symbol}: {', '.join(p.name for p in open_parts)} left open (the day is not "
                                    f"over); run again later to complete it")
    return result


def _days(req: FetchRequest) -> list[date]:
    return days_between(req.start, req.end)
