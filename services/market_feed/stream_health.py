"""Per-stream health of live mode (frames, reconnects, timeouts, backfill…) and the progress timeout derived from it.

``StreamHealth`` is what the heartbeat and ``/health`` show per ``exchange|symbol|trades`` (or ``|ticker``);
``stream_timeout`` is how long a stream may go without a frame before its socket is taken for dead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from services.market_feed.settings import Settings


@dataclass
class StreamHealth:
    """Counters of one (exchange, symbol, stream) for the heartbeat and /health."""

    messages: int = 0
    trades: int = 0
    reconnects: int = 0
    timeouts: int = 0
    errors: int = 0
    backfilled: int = 0
    duplicates: int = 0
    gaps: int = 0
    last_message: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    mean_gap_s: float | None = None  # EWMA of the time between frames
    silent_streak: int = 0  # silence timeouts in a row (each one doubles the next timeout)

    def message(self) -> None:
        now = time.monotonic()
        if self.messages:
            gap = now - self.last_message
            self.mean_gap_s = gap if self.mean_gap_s is None else 0.9 * self.mean_gap_s + 0.1 * gap
        self.messages += 1
        self.last_message = now
        self.silent_streak = 0

    def fields(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"age_s": round(now - self.last_message, 1),
                "msgs_per_s": round(self.messages / max(now - self.started, 1e-9), 2),
                "reconnects": self.reconnects, "timeouts": self.timeouts, "errors": self.errors,
                "backfilled": self.backfilled, "duplicates": self.duplicates, "gaps": self.gaps}


def stream_timeout(settings: Settings, health: StreamHealth) -> float:
    """How long a symbol may go without a frame before its socket is taken for dead.

    Before the first frame: ``silence_timeout_s``. After: the shorter of the silence rule (``max(base, 20 × mean
    gap)``, at most 20 × base) and the stall rule (``stall_intervals`` × mean gap, at least ``stall_min_s``) — a busy
    pair is reconnected within seconds when it stops delivering, a quiet pair keeps its long timeout. Each timeout
    in a row doubles the next (capped at 60 × base): a symbol that went quiet is not a reconnect storm."""
    base = settings.silence_timeout_s
    gap = health.mean_gap_s
    if gap is None:
        timeout = base
    else:
        timeout = min(max(base, 20 * gap), base * 20, max(settings.stall_min_s, settings.stall_intervals * gap))
    return min(timeout * 2 ** min(health.silent_streak, 10), base * 60)
