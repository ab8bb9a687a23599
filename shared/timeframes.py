"""Timeframes and UTC bucket alignment by exchange timestamp (milliseconds)."""

from __future__ import annotations

import re

from shared.errors import ConfigError

_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# 1970-01-01 was a Thursday; weeks start on Monday 00:00 UTC (Binance), 4 days later.
_WEEK_OFFSET_MS = 4 * 86_400_000

#: Timeframes candle_builder can derive, shortest first.
SUPPORTED = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d", "1w")

_TF_RE = re.compile(r"^(\d+)([smhdw])$")
_SUPPORTED_MS = {tf: int(tf[:-1]) * _UNIT_MS[tf[-1]] for tf in SUPPORTED}


def timeframe_ms(timeframe: str) -> int:
    """Length of a timeframe such as ``"5m"`` in milliseconds; ConfigError if it is not supported."""
    known = _SUPPORTED_MS.get(timeframe)  # (called per candle in places: no regex for a known timeframe)
    if known is not None:
        return known
    match = _TF_RE.match(timeframe)
    if not match or timeframe not in SUPPORTED:
        raise ConfigError(f"timeframe {timeframe!r} is not supported; expected one of {', '.join(SUPPORTED)}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def bucket_start(ts_ms: int, timeframe_len_ms: int) -> int:
    """Start (ms, UTC) of the bucket of length ``timeframe_len_ms`` that holds ``ts_ms``.

    Weekly buckets start on Monday 00:00 UTC; every shorter one is aligned to the epoch, which is how exchanges align
    them (a 4h bucket starts at 00:00, 04:00, ... UTC).
    """
    if timeframe_len_ms == _UNIT_MS["w"]:
        return (ts_ms - _WEEK_OFFSET_MS) // timeframe_len_ms * timeframe_len_ms + _WEEK_OFFSET_MS
    return ts_ms // timeframe_len_ms * timeframe_len_ms


def sort_timeframes(timeframes: list[str] | set[str] | tuple[str, ...]) -> list[str]:
    """Unique timeframes sorted from shortest to longest."""
    return sorted(set(timeframes), key=timeframe_ms)
