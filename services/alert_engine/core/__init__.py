"""The alert engine's pure logic: no asyncio, no Redis, no clock (timestamps are passed in).

- ``window``: the closed candles kept of one series, the ticker as of each bar, the indicators over them (and the
  views conditions read: as of an earlier close, at one trade or ticker);
- ``indicators``: incremental indicators (O(1) per candle);
- ``conditions``: a rule's condition compiled into a function of a view;
- ``reads``, ``routes``: what a rule reads, and which rules run on which series, trades and tickers;
- ``firing``: rule status (``for:``, resolve, frequency, expiry, snooze); ``alerts``: the alerts and their ids;
- ``market``, ``waiting``: what has been read, and the closed bars waiting for other series;
- ``engine``: ``AlertEngine``, which ties them: candles, tickers and trades in, ``Fire`` records out.
"""

from __future__ import annotations

from services.alert_engine.core.alerts import Fire, alert_id, fingerprint
from services.alert_engine.core.engine import AlertEngine
from services.alert_engine.core.firing import FOREVER, RuleStatus
from services.alert_engine.core.window import CandleWindow, SeriesKey

__all__ = ["FOREVER", "AlertEngine", "CandleWindow", "Fire", "RuleStatus", "SeriesKey", "alert_id", "fingerprint"]
