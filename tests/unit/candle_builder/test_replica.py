"""``SeriesBuilder.replica``: a builder restored from another's ``dump()`` alone (no settings) continues exactly as the
original on the same input — what the alert engine's fast close relies on (services/alert_engine/fastclose.py)."""

from __future__ import annotations

import csv
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.candle_builder.core import SeriesBuilder
from shared.schemas import pack, unpack
from tests.conftest import shared_data

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"


def _trades() -> list[tuple]:
    with shared_data(BTC).open(newline="") as fh:
        return [(int(r["id"]), int(r["timestamp"]), Decimal(r["price"]), Decimal(r["amount"]), r["side"] == "buy")
                for r in csv.DictReader(fh)]


TRADES = _trades()


def _bars(out: list) -> list[tuple]:
    return [(tf, b.ts, b.open, b.high, b.low, b.close, b.volume, b.buy_volume, b.sell_volume, b.quote_volume,
             b.trades, b.first_id, b.last_id, b.revision, b.incomplete) for tf, b in out]


def _feed(builder: SeriesBuilder, chunks: list[list[tuple]], out: list) -> None:
    for chunk in chunks:
        builder.add_trades(chunk, out)


def _chunks(trades: list[tuple], size: int) -> list[list[tuple]]:
    return [trades[i:i + size] for i in range(0, len(trades), size)]


@settings(max_examples=25, deadline=None)
@given(split=st.integers(1, len(TRADES) - 1), size=st.integers(1, 200),
       config=st.sampled_from([(["1s", "1m", "5m"], "1m", True, 0), (["1m", "15m"], "1m", False, 0),
                               (["5m", "1h"], "1m", True, 5_000), (["1s"], "1s", False, 2_000)]),
       late=st.booleans())
def test_a_replica_of_a_dump_emits_what_the_original_emits(split, size, config, late):
    tfs, base, flat, lateness = config
    trades = TRADES[::5]
    if late:  # some trades out of order: late trades within (or beyond) the window revise (or are dropped)
        trades = [t for pair in zip(trades[1::2], trades[::2]) for t in pair]
    split = split * len(trades) // len(TRADES) or 1
    original = SeriesBuilder(tfs, base=base, flat_candles=flat, lateness_ms=lateness, max_flat=10_000)
    _feed(original, _chunks(trades[:split], size), [])
    state = unpack(pack(original.dump()))  # as candle_builder saves it in Redis
    replica = SeriesBuilder.replica(state)
    assert replica.timeframes == original.timeframes
    want: list = []
    got: list = []
    rest = _chunks(trades[split:], size)
    _feed(original, rest, want)
    _feed(replica, rest, got)
    original.advance(trades[-1][1] + 3_600_000, want, final=True)
    replica.advance(trades[-1][1] + 3_600_000, got, final=True)
    assert want, "nothing closed after the split: the check would prove nothing"
    assert _bars(got) == _bars(want)


def test_a_state_without_its_configuration_is_refused():
    builder = SeriesBuilder(["1m"])
    builder.add_trades(TRADES[:100], [])
    state = builder.dump()
    del state["config"]
    with pytest.raises(ValueError, match="configuration"):
        SeriesBuilder.replica(state)
