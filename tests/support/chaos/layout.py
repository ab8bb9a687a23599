"""Where the pipeline keeps its data in Redis, as the chaos harness sees it: the one place in the harness that knows
stream and key names, all of them taken from ``shared.streams``.

Trades and tickers live in partition streams shared by the pairs of a partition (issue 21); candles are per series
today. Everything else reads the entries' own exchange and symbol (``verify``), asks Redis which consumer groups read
a stream, and reads candle_builder's saved offsets (``progress``).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import streams
from shared.alert_streams import alert_streams
from shared.partitions import DEFAULT_PARTITIONS, partition_of


@dataclass(frozen=True)
class Pair:
    """One market: the exchange id the data is labelled with and the unified symbol."""

    exchange: str
    symbol: str

    def __str__(self) -> str:
        return f"{self.exchange} {self.symbol}"


@dataclass(frozen=True)
class Layout:
    """The Redis names of one run: what each stream kind is called, and the per-pair feed progress keys."""

    trades: dict[Pair, str]  # the partition stream holding a pair's TradeBatch / GapMarker / Watermark entries
    tickers: dict[Pair, str]
    candles: dict[tuple[Pair, str], str]  # (pair, timeframe) -> closed candles
    alerts: str  # the alerts stream injected and sabotaged entries go to (one of alert_streams)
    alert_streams: tuple[str, ...]  # every partition's alerts stream: every alert the engine published
    dead_letters: tuple[str, ...]
    feed_state: dict[Pair, tuple[str, str, str]]  # the hash holding the feed's last id and last ts of a pair, fields
    builder_offsets: dict[str, tuple[str, str]]  # trades stream -> candle_builder's (state hash, offset field)
    engine_offsets: dict[str, tuple[str, str]]  # partition candles stream -> alert_engine's (state hash, offset field)
    heartbeats: dict[str, str]  # service -> heartbeat hash

    def consumed(self) -> list[str]:
        """Every stream a consumer group may read: the ones whose groups must catch up."""
        return sorted({*self.trades.values(), *self.tickers.values(), *self.candles.values(), *self.alert_streams,
                       *self.engine_offsets})


SERVICES = ("market_feed", "candle_builder", "alert_engine", "notifier")


def layout(pairs: list[Pair], timeframes: list[str], partitions: int = DEFAULT_PARTITIONS) -> Layout:
    """The names for ``pairs`` and every timeframe in ``timeframes``, from ``shared.streams``."""
    part = {p: partition_of(p.exchange, p.symbol, partitions) for p in pairs}
    trades = {p: streams.part_trades(part[p]) for p in pairs}
    return Layout(
        trades=trades,
        tickers={p: streams.part_tickers(part[p]) for p in pairs},
        candles={(p, tf): streams.series_candles(part[p], p.exchange, p.symbol, tf) for p in pairs for tf in timeframes},
        alerts=streams.part_alerts(0),
        alert_streams=tuple(alert_streams(DEFAULT_PARTITIONS)),
        dead_letters=(streams.DEAD_LETTER, streams.NOTIFY_DEAD_LETTER),
        # (market_feed's per-pair fields in its partition state: services/market_feed/publisher.py)
        feed_state={p: (streams.part_state(part[p], streams.feed_group(p.exchange)), f"last_id:{p.symbol}",
                        f"last_ts:{p.symbol}") for p in pairs},
        builder_offsets={trades[p]: (streams.part_state(part[p], streams.GROUP_CANDLE_BUILDER),
                                     streams.offset_field(trades[p])) for p in pairs},
        engine_offsets={streams.part_candles(part[p]): (streams.part_state(part[p], streams.GROUP_ALERT_ENGINE),
                                                        streams.offset_field(streams.part_candles(part[p])))
                        for p in pairs},
        heartbeats={s: streams.heartbeat(s) for s in SERVICES},
    )


def delivery_records(alert_id: str, targets: list[str]) -> list[str]:
    """The notifier's idempotency records of one alert, one per target (channel name)."""
    return [streams.notify_sent(alert_id, t) for t in targets]
