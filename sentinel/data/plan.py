"""What ``sentinel data fetch`` gets and where it puts it: pure functions of symbols, days and a folder.

Binance's public-data archives (``data.binance.vision``) are laid out as::

    data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-08-08.zip            one UTC day
    data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2024-08-08.zip.CHECKSUM   "<sha256 hex>  <zip name>"
    data/spot/monthly/trades/BTCUSDT/BTCUSDT-trades-2024-07.zip             one calendar month
    data/futures/um/daily/trades/BTCUSDT/...                                USD-M futures, the same below

Each zip holds one CSV of the same name (spot: no header; futures: a header ``id,price,qty,quote_qty,time,
is_buyer_maker``; from 2025 on spot times are in microseconds). A day's file appears the day after; a month's a few
days after the month ends.

Output, whatever the source: one CSV per symbol and UTC day, ``DIR/<source>/<SYMBOL>-trades-<YYYY-MM-DD>.csv``
(``BTCUSDT-trades-2024-08-08.csv``: ``sentinel backtest`` takes the symbol from the name and the exchange from the
folder). Archives are kept under ``DIR/archives/`` in the remote layout, so a verified one is never fetched again.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from shared.errors import SentinelError

MARKETS = {"spot": "data/spot", "usdm": "data/futures/um"}
#: Folder (under DIR) of each archive market's CSVs: the exchange as ``sentinel backtest`` guesses it from the path.
ARCHIVE_FOLDERS = {"spot": "binance", "usdm": "binance-usdm"}
DAY_MS = 86_400_000
_SHA256 = re.compile(r"^([0-9a-fA-F]{64})\b")


class FetchError(SentinelError):
    """A download could not be done; the message names the cause and what to do."""


class ChecksumError(FetchError):
    """A downloaded archive does not match its published SHA-256 (corrupted, or changed on the server)."""


@dataclass(frozen=True)
class ArchiveFile:
    """One zip of Binance's public data: a day's or a whole month's trades of one symbol."""

    symbol_id: str  # BTCUSDT
    market: str  # spot | usdm
    period: str  # 2024-08-08 (daily) or 2024-07 (monthly)
    days: tuple[date, ...]  # the UTC days it holds

    @property
    def monthly(self) -> bool:
        return len(self.period) == 7

    @property
    def name(self) -> str:
        return f"{self.symbol_id}-trades-{self.period}.zip"

    @property
    def path(self) -> str:
        """Path below the base URL (and below ``DIR/archives``)."""
        kind = "monthly" if self.monthly else "daily"
        return f"{MARKETS[self.market]}/{kind}/trades/{self.symbol_id}/{self.name}"

    @property
    def checksum_path(self) -> str:
        return self.path + ".CHECKSUM"


def market_id(symbol: str) -> str:
    """``BTC/USDT`` / ``BTC/USDT:USDT`` / ``btcusdt`` → ``BTCUSDT`` (the archives' and file names' spelling)."""
    return symbol.split(":", 1)[0].replace("/", "").replace("-", "").upper()


def parse_day(text: str, option: str) -> date:
    """``2024-08-08`` → a date; FetchError naming ``option`` otherwise."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise FetchError(f"{option} {text!r}: expected a UTC day as YYYY-MM-DD, e.g. 2024-08-08") from None


def days_between(start: date, end: date) -> list[date]:
    """Every day from ``start`` to ``end``, both included."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def day_of_ms(ts_ms: int) -> date:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).date()


def day_csv_name(symbol_id: str, day: date) -> str:
    return f"{symbol_id}-trades-{day.isoformat()}.csv"


def archive_files(symbol_id: str, market: str, start: date, end: date, today: date) -> list[ArchiveFile]:
    """The zips holding ``start``..``end`` (UTC days): a monthly zip for each whole calendar month in the range that
    ended before ``today``'s month began, a daily zip for every other day. Days from ``today`` on are not archived
    yet and are left out (``unarchived_days`` lists them)."""
    if market not in MARKETS:
        raise FetchError(f"--market {market!r}: expected one of {', '.join(MARKETS)}")
    out: list[ArchiveFile] = []
    day = start
    last = min(end, today - timedelta(days=1))
    while day <= last:
        month_end = day.replace(day=calendar.monthrange(day.year, day.month)[1])
        whole_month = day.day == 1 and month_end <= last and month_end < today.replace(day=1)
        if whole_month:
            out.append(ArchiveFile(symbol_id, market, f"{day:%Y-%m}", tuple(days_between(day, month_end))))
            day = month_end + timedelta(days=1)
        else:
            out.append(ArchiveFile(symbol_id, market, day.isoformat(), (day,)))
            day += timedelta(days=1)
    return out


def daily_files(monthly: ArchiveFile) -> list[ArchiveFile]:
    """The daily zips covering the same days as a monthly one (when the month's zip is not published)."""
    return [ArchiveFile(monthly.symbol_id, monthly.market, d.isoformat(), (d,)) for d in monthly.days]


def unarchived_days(start: date, end: date, today: date) -> list[date]:
    """Days of the range that have no archive yet (today and later)."""
    return [d for d in days_between(start, end) if d >= today]


def parse_checksum(text: str, source: str) -> str:
    """The SHA-256 hex digest of a ``.CHECKSUM`` file (``<hex>  <name>``), lower case."""
    match = _SHA256.match(text.strip())
    if not match:
        raise FetchError(f"{source}: not a checksum file (expected '<sha256 hex>  <file name>', got "
                         f"{text.strip()[:80]!r})")
    return match.group(1).lower()
