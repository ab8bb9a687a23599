"""How the report writes numbers, durations and times (the page and the terminal alike)."""

from __future__ import annotations

import time
from decimal import Decimal


def pct(value: Decimal | None, signed: bool = True) -> str:
    """0.0123 → +1.230% (– for none)."""
    if value is None:
        return "–"
    return f"{value * 100:{'+' if signed else ''}.3f}%"


def duration(ms: int) -> str:
    s = ms // 1000
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172_800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))
