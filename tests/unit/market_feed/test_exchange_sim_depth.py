"""The local exchange's order books and perpetuals (pure state), against the exchange's own data and independent
rebuilds."""

from __future__ import annotations

import gzip
import json
import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.exchange_sim.depth import SimDepth, SyntheticDepth, recorded_depth
from services.exchange_sim.futures import Perpetual, funding_rate, next_funding_ms
from shared.errors import ConfigError
from shared.orderbook.binance import DiffDepthSync
from shared.orderbook.book import parse_levels
from shared.schemas import Trade
from tests.conftest import shared_data

CAPTURE = "binance_spot_btcusdt/raw_ws_btcusdt_20240808.gz"


def test_recorded_depth_replayed_by_the_exchange_agrees_with_binance_book_ticker():
    rec = recorded_depth([shared_data(CAPTURE)])
    state = SimDepth("BTCUSDT")
    state.load(rec.last_update_id, parse_levels(rec.bids), parse_levels(rec.asks))
    for event in rec.diffs:
        assert state.apply(event) is event
    with gzip.open(shared_data(CAPTURE), "rt") as f:
        tickers = [m["data"] for m in (json.loads(line.split(" ", 1)[1]) for line in f)
                   if m.get("stream") == "btcusdt@bookTicker"]
    shared = [t for t in tickers if state.best_at(t["u"]) is not None]
    assert len(shared) == 564
    for t in shared:
        bid, ask = state.best_at(t["u"])
        assert (bid, ask) == ((Decimal(t["b"]), Decimal(t["B"])), (Decimal(t["a"]), Decimal(t["A"])))
    snap = state.snapshot(5)
    assert snap["lastUpdateId"] == rec.diffs[-1]["u"] and len(snap["bids"]) == 5
    assert snap["bids"][0][0].endswith(".00000000") or len(snap["bids"][0][0].split(".")[1]) == 8  # Binance's format


def test_gap_mode_withholds_a_diff_but_the_exchange_book_moves_on():
    state = SimDepth("X")
    state.load(10, [(Decimal(1), Decimal(1))], [(Decimal(2), Decimal(1))])
    state.drop_next = 1
    assert state.apply({"U": 11, "u": 12, "b": [["1", "5"]], "a": []}) is None
    assert state.apply({"U": 13, "u": 13, "b": [], "a": []}) is not None
    assert state.update_id == 13 and state.dropped == 1 and state.book.best_bid().size == 5
    with pytest.raises(ValueError):
        state.apply({"U": 20, "u": 21, "b": [], "a": []})


def test_synthetic_depth_rebuilt_by_a_client_from_snapshot_and_diffs():
    rng = random.Random(3)
    gen = SyntheticDepth("BTCUSDT", Decimal("0.01"), Decimal("0.00001"), Decimal("0.001"), seed=7)
    state = SimDepth("BTCUSDT")
    price = Decimal("60000.00")
    client = DiffDepthSync()
    for step in range(300):
        price += Decimal(rng.randint(-3, 3)) * Decimal("0.01")
        event = gen.diff(price, state.update_id + 1, 1_700_000_000_000 + step * 100)
        state.apply(event)
        if step == 50:
            snap = state.snapshot(5000)
            client.snapshot(snap["lastUpdateId"], parse_levels(snap["bids"]), parse_levels(snap["asks"]))
        elif step > 50:
            client.diff(json.loads(json.dumps(event)))  # as it travels
            assert client.book.top() == state.book.top()
            assert not state.book.crossed()
            assert len(state.book.bids) == len(state.book.asks) == 50


def test_recorded_depth_reports_file_and_line(tmp_path):
    bad = tmp_path / "cap.txt"
    bad.write_text('1 {"lastUpdateId": 1, "bids": [], "asks": []}\nnot-a-line\n')
    with pytest.raises(ConfigError, match=r"cap.txt:2: depth capture"):
        recorded_depth([bad])
    none = tmp_path / "none.txt"
    none.write_text('1 {"stream": "btcusdt@trade", "data": {}}\n')
    with pytest.raises(ConfigError, match="no REST snapshot"):
        recorded_depth([none])


@pytest.mark.parametrize("premium, rate", [("0", "0.0001"), ("0.0001", "0.0001"), ("0.001", "0.0005"),
                                           ("-0.0003", "0.0001"), ("-0.001", "-0.0005"), ("0.02", "0.0075"),
                                           ("-0.02", "-0.0075")])
def test_funding_formula(premium, rate):
    # P + clamp(0.01% - P, -0.05%, 0.05%), then clamp(-0.75%, 0.75%): written out per case
    assert funding_rate(Decimal(premium)) == Decimal(rate)


def test_next_funding_is_the_next_8_hour_boundary():
    for iso, nxt in (("2024-08-08T23:54:15", "2024-08-09T00:00:00"), ("2024-08-09T00:00:00", "2024-08-09T08:00:00"),
                     ("2024-08-09T15:59:59.999", "2024-08-09T16:00:00")):
        ms = int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)
        assert next_funding_ms(ms) == int(datetime.fromisoformat(nxt).replace(tzinfo=UTC).timestamp() * 1000)


def test_perpetual_follows_the_spot_trades_and_liquidates_on_the_taker_side():
    perp = Perpetual("BTCUSDT", Decimal("0.01"), Decimal("0.001"), seed=1, liquidation_rate=0.5)
    assert perp.mark_price_event(0) is None
    liquidations = []
    for i in range(200):
        t = Trade(i, 1_000 + i, Decimal("60000.00") + i, Decimal("0.010"), i % 3 == 0)
        event = perp.on_trade(t)
        if event is not None:
            liquidations.append((t, event))
    assert 50 < len(liquidations) < 150
    for t, e in liquidations:
        o = e["o"]
        assert o["S"] == ("BUY" if t.is_buy else "SELL") and Decimal(o["ap"]) == t.price and o["T"] == t.ts
        assert Decimal(o["q"]) % t.amount == 0
    mark = perp.mark_price_event(2_000)
    assert Decimal(mark["i"]) == Decimal("60199.00")
    assert abs(Decimal(mark["p"]) / Decimal(mark["i"]) - 1) <= Decimal("0.003")  # premium is bounded
