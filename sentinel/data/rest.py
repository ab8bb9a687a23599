"""Trade history through an exchange's REST API → ``timestamp,price,amount,side,id`` CSVs, one per symbol and day.

Paging (``page_trades``): Binance by ``fromId`` after a first page by time (its time pages span one hour: an empty
one moves on by an hour); every other exchange by time, asking again from the last millisecond written and dropping
the trades of that millisecond already written (by id, or by count when the exchange gives none). A full page that
does not get past that millisecond cannot be paged by time: that is an error naming the millisecond.

Resuming (``DayFiles``): a day is written to ``<name>.csv.part`` and renamed to ``<name>.csv`` once a trade of a
later day arrives or, at the end, when the day is over by the clock. A later run skips the days that have a final
file and continues a ``.part`` from its last millisecond.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Protocol

from sentinel.data.plan import DAY_MS, FetchError, day_csv_name, day_of_ms, day_start_ms, days_between
from shared.schemas import Trade

HEADER = "timestamp,price,amount,side,id\n"


class TradePages(Protocol):
    id: str
    page_by_id: bool
    page_size: int
    time_window_ms: int | None

    async def page(self, symbol: str, *, since: int | None = None, from_id: int | None = None) -> list[Trade]: ...


@dataclass
class Cursor:
    """Where paging stands: the last millisecond written and what was written in it."""

    ts: int
    last_id: int | str | None = None
    ids_at_ts: set = field(default_factory=set)
    count_at_ts: int = 0

    def fresh(self, page: list[Trade]) -> list[Trade]:
        """The trades of ``page`` not written yet (a page by time repeats the cursor's millisecond): those of that
        millisecond are matched by id, or by count when the exchange gives no ids (it repeats them in order)."""
        out: list[Trade] = []
        repeated = 0
        for t in page:
            if t.ts < self.ts:
                continue
            if t.ts == self.ts:
                if t.id is not None and self.ids_at_ts:
                    if t.id in self.ids_at_ts:
                        continue
                else:
                    repeated += 1
                    if repeated <= self.count_at_ts:
                        continue
            out.append(t)
        return out

    def advance(self, t: Trade) -> None:
        if t.ts != self.ts:
            self.ts, self.ids_at_ts, self.count_at_ts = t.ts, set(), 0
        self.count_at_ts += 1
        if t.id is not None:
            self.ids_at_ts.add(t.id)
        self.last_id = t.id


class DayFiles:
    """The per-day CSVs of one symbol in one folder."""

    def __init__(self, folder: Path, symbol_id: str) -> None:
        self.folder, self.symbol_id = folder, symbol_id
        self._open: tuple[date, IO[str]] | None = None
        self.written: list[Path] = []

    def final(self, day: date) -> Path:
        return self.folder / day_csv_name(self.symbol_id, day)

    def part(self, day: date) -> Path:
        return self.folder / (day_csv_name(self.symbol_id, day) + ".part")

    def runs(self, start: date, end: date) -> list[tuple[date, date]]:
        """Maximal runs of days without a final file: what is left to fetch."""
        out: list[tuple[date, date]] = []
        for day in days_between(start, end):
            if self.final(day).exists():
                continue
            if out and out[-1][1] == day - timedelta(days=1):
                out[-1] = (out[-1][0], day)
            else:
                out.append((day, day))
        return out

    def resume_cursor(self, day: date) -> Cursor | None:
        """The cursor at the end of ``day``'s ``.part`` (None without one, or an empty one)."""
        part = self.part(day)
        if not part.exists():
            return None
        cursor: Cursor | None = None
        with part.open(newline="") as fh:
            for line in fh:
                cells = line.rstrip("\r\n").split(",")
                if len(cells) != 5 or not cells[0].isdigit():
                    continue
                raw_id = cells[4]
                trade = Trade(int(raw_id) if raw_id.isdigit() else (raw_id or None), int(cells[0]),
                              Decimal(cells[1]), Decimal(cells[2]), cells[3] == "buy")
                if cursor is None:
                    cursor = Cursor(trade.ts)
                cursor.advance(trade)
        return cursor

    def write(self, trades: list[Trade]) -> None:
        for t in trades:
            day = day_of_ms(t.ts)
            if self._open is None or self._open[0] != day:
                self._switch(day)
            fh = self._open[1]  # type: ignore[index]
            fh.write(f"{t.ts},{t.price:f},{t.amount:f},{'buy' if t.is_buy else 'sell'},"
                     f"{'' if t.id is None else t.id}\n")

    def _switch(self, day: date) -> None:
        if self._open is not None:
            self.finish(self._open[0])
        part = self.part(day)
        fresh = not part.exists()
        fh = part.open("a", newline="")
        if fresh:
            fh.write(HEADER)
        self._open = (day, fh)

    def finish(self, day: date) -> None:
        """Close ``day``'s file and give it its final name (the day is complete)."""
        self.close()
        part = self.part(day)
        if part.exists():
            part.replace(self.final(day))
            self.written.append(self.final(day))

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


@dataclass
class RestStats:
    trades: int = 0
    pages: int = 0
    first_ts: int | None = None
    notes: list[str] = field(default_factory=list)


async def fetch_run(source: TradePages, symbol: str, files: DayFiles, first: date, last: date, *,
                    on_progress: Callable[[int, int, int], None], now_ms: int | None = None) -> RestStats:
    """Fetch the trades of days ``first``..``last`` into ``files``; finalise every day that is over."""
    start, until = day_start_ms(first), day_start_ms(last) + DAY_MS
    stats = RestStats()
    cursor = files.resume_cursor(first)
    try:
        await page_trades(source, symbol, start, until, cursor, files, stats, on_progress)
    finally:
        files.close()
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    for day in days_between(first, last):
        if day_start_ms(day) + DAY_MS <= now_ms:
            files.finish(day)
    if stats.first_ts is not None and stats.first_ts > start + DAY_MS and (cursor is None):
        stats.notes.append(f"{source.id} {symbol}: the first trade served is from {_iso(stats.first_ts)}, later "
                           f"than asked ({first}); the exchange may not serve older history")
    return stats


async def page_trades(source: TradePages, symbol: str, start: int, until: int, cursor: Cursor | None,
                      files: DayFiles, stats: RestStats, on_progress: Callable[[int, int, int], None]) -> None:
    """Page from ``cursor`` (or ``start``) until a trade at or after ``until`` or the newest trade."""
    since = cursor.ts if cursor is not None else start
    while since < until:
        by_id = source.page_by_id and cursor is not None and isinstance(cursor.last_id, int)
        if by_id:
            page = await source.page(symbol, from_id=cursor.last_id + 1)  # type: ignore[union-attr,operator]
        else:
            page = await source.page(symbol, since=since)
        stats.pages += 1
        if not page:
            if source.time_window_ms and not by_id:
                since += source.time_window_ms  # nothing in that window: the next one
                on_progress(min(since, until) - start, until - start, stats.trades)
                continue
            return
        new = cursor.fresh(page) if cursor is not None else [t for t in page if t.ts >= start]
        keep = [t for t in new if t.ts < until]
        if cursor is None and not keep and page[0].ts >= until:
            stats.notes.append(f"{source.id} {symbol}: asked from {_iso(start)}, it served trades from "
                               f"{_iso(page[0].ts)} on; it does not serve history that old")
        if keep:
            if stats.first_ts is None:
                stats.first_ts = keep[0].ts
            files.write(keep)
            stats.trades += len(keep)
            if cursor is None:
                cursor = Cursor(keep[0].ts)
            for t in keep:
                cursor.advance(t)
            on_progress(cursor.ts - start, until - start, stats.trades)
        if len(keep) < len(new) or page[-1].ts >= until:
            return  # reached the end of the range
        if not new:
            if len(page) >= source.page_size:
                raise FetchError(f"{source.id} {symbol}: more trades at {_iso(since)} than one page holds; paging "
                                 f"by time cannot get past that point on this exchange")
            return  # nothing after what was written: the newest trade is reached
        if by_id and len(page) < source.page_size:
            return
        since = cursor.ts  # type: ignore[union-attr]


def _iso(ts_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts_ms / 1000)) + f".{ts_ms % 1000:03d} UTC"
