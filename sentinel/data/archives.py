"""Binance's public-data trade archives → one verified CSV per symbol and day (see ``plan.py`` for the layout).

Per archive: its ``.CHECKSUM`` is read first (no checksum published = no archive for that period); the zip is
downloaded into ``DIR/archives/<remote path>.part`` (a ``.part`` left by an interrupted run continues with a Range
request), hashed, and renamed to its final name only when the SHA-256 matches. A resumed file that does not match is
fetched once more from the start; a fresh one that does not match is an error for that file (the others go on).
A month whose zip is not published yet falls back to its daily zips. The CSV inside is copied unchanged (a monthly
one is split by UTC day): a day's CSV appears under its final name only when complete, so a day already on disk is
never fetched again.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO

from sentinel.data.adapters.http_download import HttpSource
from sentinel.data.plan import (ARCHIVE_FOLDERS, ArchiveFile, ChecksumError, FetchError, archive_files, daily_files,
                                day_csv_name, day_of_ms, parse_checksum)
from sentinel.data.progress import FetchProgress
from shared.recordings import US_THRESHOLD  # (the 2025+ spot archives' times are in µs)

DEFAULT_BASE_URL = "https://data.binance.vision"


@dataclass
class FetchResult:
    """What a fetch did; ``missing`` and ``failed`` hold one line each, naming the cause."""

    written: list[Path] = field(default_factory=list)
    already: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0
    trades: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.failed


@dataclass
class ArchiveJob:
    """Where one fetch of archives reads from and writes to."""

    source: HttpSource
    root: Path
    market: str
    progress: FetchProgress
    keep_archives: bool = False
    result: FetchResult = field(default_factory=FetchResult)

    @property
    def out_dir(self) -> Path:
        return self.root / ARCHIVE_FOLDERS[self.market]


async def fetch_symbol(job: ArchiveJob, symbol_id: str, start: date, end: date, today: date,
                       concurrency: int = 4) -> None:
    """Every archive of ``symbol_id`` for ``start``..``end`` into ``job.out_dir``; results in ``job.result``."""
    files = archive_files(symbol_id, job.market, start, end, today)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    label = f"{symbol_id} {job.market} archives"
    task = job.progress.item_task(f"{label} 0/{len(files)}", total=len(files))
    gate = asyncio.Semaphore(concurrency)
    found: list[bool] = []

    async def one(f: ArchiveFile) -> None:
        async with gate:
            found.append(await _fetch_file(job, f))
        job.progress.set_completed(task, len(found), f"{label} {len(found)}/{len(files)}")

    await asyncio.gather(*(one(f) for f in files))
    if files and not any(found):
        # Not one period of the range exists: far likelier a wrong symbol or market than a run of missing days.
        job.result.missing = [m for m in job.result.missing if not m.startswith(f"{symbol_id} ")]
        job.result.failed.append(
            f"{symbol_id}: Binance {job.market} publishes no trade archive for it from {start} to {end} (checked "
            f"{job.source.url(files[0].checksum_path)}); check the symbol (spelt like BTCUSDT), --market spot|usdm, "
            f"and the dates (a day is archived the day after)")


async def _fetch_file(job: ArchiveJob, f: ArchiveFile) -> bool:
    """Fetch, verify and unpack one archive; False when it is not published."""
    needed = _days_to_write(job, f)
    if not needed:
        return True
    checksum = await job.source.text(f.checksum_path)
    if checksum is None:
        if f.monthly:  # the month's zip comes a few days after it ends: its days one by one meanwhile
            results = [await _fetch_file(job, d) for d in daily_files(f)]
            return any(results)
        job.result.missing.append(f"{f.symbol_id} {f.period}: no archive published "
                                  f"({job.source.url(f.checksum_path)} answered 404)")
        return False
    try:
        expected = parse_checksum(checksum, job.source.url(f.checksum_path))
        zip_path = await _verified_zip(job, f, expected)
        if zip_path is None:
            job.result.missing.append(f"{f.symbol_id} {f.period}: checksum published but no archive "
                                      f"({job.source.url(f.path)} answered 404)")
            return False
        written, trades = await asyncio.to_thread(unpack, zip_path, f, needed, job.out_dir)
    except FetchError as exc:
        job.result.failed.append(str(exc))
        return True
    _unpacked_marker(job, f).write_text("".join(f"{p.name}\n" for p in written))
    job.result.written.extend(written)
    job.result.trades += trades
    if not job.keep_archives:
        zip_path.unlink()
    return True


def _unpacked_marker(job: ArchiveJob, f: ArchiveFile) -> Path:
    """Beside the archive's place: the day files it gave (a month's zip has no file for a day without trades)."""
    return job.root / "archives" / (f.path + ".unpacked")


def _days_to_write(job: ArchiveJob, f: ArchiveFile) -> list[date]:
    marker = _unpacked_marker(job, f)
    names = set(marker.read_text().split()) if marker.exists() else None
    days = [d for d in f.days if names is None or day_csv_name(f.symbol_id, d) in names]
    there = [d for d in days if (job.out_dir / day_csv_name(f.symbol_id, d)).exists()]
    job.result.already.extend(job.out_dir / day_csv_name(f.symbol_id, d) for d in there)
    return [d for d in days if d not in there]


async def _verified_zip(job: ArchiveJob, f: ArchiveFile, expected: str) -> Path | None:
    """The archive on disk, matching ``expected``: a verified one already there, else downloaded (resuming a
    ``.part``). None on 404; ChecksumError when a complete fresh download does not match."""
    final = job.root / "archives" / f.path
    if final.exists() and await asyncio.to_thread(sha256_of, final) == expected:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    for fresh in (not part.exists(), True):
        if fresh and part.exists():
            part.unlink()
        bar = job.progress.download(f.name)
        try:
            if not await job.source.download(f.path, part, bar.on_size, bar.on_bytes):
                return None
        finally:
            bar.done()
            job.result.bytes_downloaded += bar.received
        actual = await asyncio.to_thread(sha256_of, part)
        if actual == expected:
            part.replace(final)
            return final
        if fresh:
            part.unlink()
            raise ChecksumError(
                f"{f.name}: SHA-256 {actual[:16]}… does not match the published {expected[:16]}… "
                f"({job.source.url(f.checksum_path)}); the download was corrupted or the archive changed on the "
                f"server: run the command again to fetch it anew")
    return None  # not reached: the second pass is always fresh


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unpack(zip_path: Path, f: ArchiveFile, days: list[date], out_dir: Path) -> tuple[list[Path], int]:
    """Write the CSV of the archive's ``days`` to ``out_dir`` (the rows unchanged); (files written, trades)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = [m for m in zf.namelist() if m.lower().endswith(".csv")]
            if len(members) != 1:
                raise FetchError(f"{zip_path}: expected one CSV inside, found {len(members)}; the archive layout "
                                 f"changed — report it")
            with zf.open(members[0]) as raw:
                if not f.monthly:
                    return _copy_day(raw, out_dir / day_csv_name(f.symbol_id, f.days[0]))
                return _split_days(io.TextIOWrapper(raw, encoding="utf-8", newline=""), f, set(days), out_dir)
    except zipfile.BadZipFile as exc:
        zip_path.unlink()
        raise FetchError(f"{zip_path}: not a readable zip ({exc}); run the command again to fetch it anew") from exc


def _copy_day(raw: IO[bytes], dest: Path) -> tuple[list[Path], int]:
    part = dest.with_name(dest.name + ".part")
    lines, first, last = 0, b"", b"\n"
    with part.open("wb") as out:
        for chunk in iter(lambda: raw.read(1 << 20), b""):
            out.write(chunk)
            lines += chunk.count(b"\n")
            first, last = first or chunk[:1], chunk[-1:]
    part.replace(dest)
    rows = lines + (last != b"\n") - (bool(first) and not first.isdigit())  # an unterminated last row; a header
    return [dest], rows


def _split_days(text: IO[str], f: ArchiveFile, days: set[date], out_dir: Path) -> tuple[list[Path], int]:
    """Route each row of a monthly CSV to its UTC day's file (a header line goes to every file)."""
    header: str | None = None
    parts: dict[date, IO[str]] = {}
    rows = 0
    try:
        for line in text:
            first = line.split(",", 1)[0].strip()
            if not first.isdigit():
                header = header or (line if line.strip() else None)
                continue
            ts = int(line.split(",", 5)[4])  # plain numbers and words: no quoting in these files
            day = day_of_ms(ts // 1000 if ts >= US_THRESHOLD else ts)
            if day not in days:
                continue
            out = parts.get(day)
            if out is None:
                out = parts[day] = (out_dir / (day_csv_name(f.symbol_id, day) + ".part")).open("w", newline="")
                if header:
                    out.write(header)
            out.write(line)
            rows += 1
    finally:
        for out in parts.values():
            out.close()
    written = []
    for day in sorted(parts):
        dest = out_dir / day_csv_name(f.symbol_id, day)
        (out_dir / (dest.name + ".part")).replace(dest)
        written.append(dest)
    return written, rows
