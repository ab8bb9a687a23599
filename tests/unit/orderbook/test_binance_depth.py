"""Binance's real depth@100ms diffs replayed through DiffDepthSync agree with Binance's own bookTicker.

The capture (../shared/data/binance_spot_btcusdt/raw_ws_btcusdt_2024080{8,9}.gz) holds a REST snapshot, the diffs
and the exchange's bookTicker (best bid/ask with the update id ``u`` it describes). Wherever a diff ends at the same
``u`` as a bookTicker, the book's best levels must equal the bookTicker's. The reference below rebuilds the book
independently (plain dicts, the rules written out again, best levels by max/min over all prices).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.orderbook.binance import BookNotSyncedError, DiffDepthSync, DiffResult, SequenceGapError
from shared.orderbook.book import parse_levels
from tests.unit.orderbook.captures import binance_capture


def _reference_points(frames: list[dict], bids: dict, asks: dict, last: int | None) -> tuple[list, int | None]:
    """(u, best bid, bid size, best ask, ask size) at every diff whose u a bookTicker also carries, rebuilt with
    plain dicts: the file's snapshot (wherever it arrived) replaces the book, then every diff in the file with
    u > lastUpdateId is applied in file order."""
    ticker_ids = {f["data"]["u"] for f in frames if f.get("stream", "").endswith("@bookTicker")}
    for f in frames:
        if "lastUpdateId" in f:
            bids.clear(), asks.clear()
            bids.update({Decimal(p): Decimal(q) for p, q in f["bids"]})
            asks.update({Decimal(p): Decimal(q) for p, q in f["asks"]})
            last = f["lastUpdateId"]
    points = []
    for f in frames:
        if not f.get("stream", "").endswith("@depth@100ms") or last is None or f["data"]["u"] <= last:
            continue
        d = f["data"]
        for side, rows in ((bids, d["b"]), (asks, d["a"])):
            for p, q in rows:
                if Decimal(q) == 0:
                    side.pop(Decimal(p), None)
                else:
                    side[Decimal(p)] = Decimal(q)
        last = d["u"]
        if last in ticker_ids:
            bb, ba = max(bids), min(asks)
            points.append((last, bb, bids[bb], ba, asks[ba]))
    return points, last


def _replay(sync: DiffDepthSync, frames: list[dict], tickers: dict[int, dict], drop_u: int | None = None,
            resync_from: dict | None = None) -> tuple[int, int]:
    """Feed the capture to ``sync``; return (points compared, points agreeing) against the bookTicker."""
    compared = agreeing = 0
    for f in frames:
        if "lastUpdateId" in f:
            sync.snapshot(f["lastUpdateId"], parse_levels(f["bids"]), parse_levels(f["asks"]))
            continue
        if not f.get("stream", "").endswith("@depth@100ms"):
            continue
        d = f["data"]
        if d["u"] == drop_u:
            continue
        try:
            sync.diff(d)
        except SequenceGapError:
            assert resync_from is not None
            snap = resync_from[d["U"] - 1]  # what GET /api/v3/depth would answer right before this event
            sync.snapshot(d["U"] - 1, *snap)
        t = tickers.get(d["u"])
        if t is not None:
            compared += 1
            book = sync.book
            agreeing += (book.best_bid() == (Decimal(t["b"]), Decimal(t["B"]))
                         and book.best_ask() == (Decimal(t["a"]), Decimal(t["A"])))
    return compared, agreeing


def _tickers(frames: list[dict]) -> dict[int, dict]:
    return {f["data"]["u"]: f["data"] for f in frames if f.get("stream", "").endswith("@bookTicker")}


@pytest.fixture(scope="module")
def captures() -> tuple[list[dict], list[dict]]:
    return binance_capture("20240808"), binance_capture("20240809")


def test_replayed_diffs_agree_with_binance_book_ticker_at_every_shared_update_id(captures):
    day1, day2 = captures
    ref_bids: dict = {}
    ref_asks: dict = {}
    ref1, last = _reference_points(day1, ref_bids, ref_asks, None)
    ref2, _ = _reference_points(day2, ref_bids, ref_asks, last)  # the second file continues the first
    # the reference itself agrees with the exchange at every point (else the reference is wrong, not the book)
    for frames, ref in ((day1, ref1), (day2, ref2)):
        tickers = _tickers(frames)
        assert all((bb, bq, ba, aq) == (Decimal(tickers[u]["b"]), Decimal(tickers[u]["B"]), Decimal(tickers[u]["a"]),
                                        Decimal(tickers[u]["A"])) for u, bb, bq, ba, aq in ref)
    assert len(ref1) == 564 and len(ref2) == 507

    sync = DiffDepthSync()
    assert _replay(sync, day1, _tickers(day1)) == (564, 564)
    assert _replay(sync, day2, _tickers(day2)) == (507, 507)
    assert sync.gaps == 0 and sync.levels_applied > 100_000


def test_a_dropped_diff_is_detected_and_the_resynced_book_agrees_again(captures):
    day1, _ = captures
    diffs = [f["data"] for f in day1 if f.get("stream", "").endswith("@depth@100ms")]
    dropped = diffs[1000]
    # what the exchange's REST snapshot would answer at each update id: the reference book after every diff
    snapshots: dict[int, tuple] = {}
    ref = DiffDepthSync()
    for f in day1:
        if "lastUpdateId" in f:
            ref.snapshot(f["lastUpdateId"], parse_levels(f["bids"]), parse_levels(f["asks"]))
        elif f.get("stream", "").endswith("@depth@100ms") and ref.diff(f["data"]) is DiffResult.APPLIED:
            if f["data"]["u"] == diffs[1001]["U"] - 1:
                snapshots[f["data"]["u"]] = ref.book.top()
    sync = DiffDepthSync()
    compared, agreeing = _replay(sync, day1, _tickers(day1), drop_u=dropped["u"], resync_from=snapshots)
    assert sync.gaps == 1
    ticker_ids = set(_tickers(day1))
    lost = sum(1 for d in diffs[1000:1001] if d["u"] in ticker_ids)  # points inside the dropped diff
    assert (compared, agreeing) == (564 - lost, 564 - lost)


def test_gap_unsyncs_the_book_until_a_new_snapshot():
    sync = DiffDepthSync()
    lv = [["10.00", "1.0"]]
    assert sync.diff({"U": 5, "u": 7, "b": lv, "a": []}) is DiffResult.BUFFERED
    with pytest.raises(BookNotSyncedError):
        sync.book
    # snapshot at 6: the buffered event (5..7) straddles 6 + 1 and is applied
    assert sync.snapshot(6, parse_levels([["9.00", "2"]]), parse_levels([["11.00", "3"]])) == 1
    assert sync.book.update_id == 7 and sync.book.best_bid().price == Decimal("10.00")
    assert sync.diff({"U": 3, "u": 7, "b": [], "a": []}) is DiffResult.STALE
    with pytest.raises(SequenceGapError) as gap:
        sync.diff({"U": 9, "u": 9, "b": [["10.00", "0"]], "a": []})  # 8 is missing
    assert (gap.value.expected, gap.value.got) == (8, 9)
    with pytest.raises(BookNotSyncedError):
        sync.book
    # the event that revealed the gap is kept and applied on a snapshot it straddles
    assert sync.snapshot(8, parse_levels([["10.00", "1.0"]]), []) == 1
    assert sync.book.best_bid() is None and sync.update_id == 9


def test_first_event_after_a_snapshot_must_straddle_it():
    sync = DiffDepthSync()
    sync.diff({"U": 20, "u": 25, "b": [], "a": []})
    with pytest.raises(SequenceGapError):
        sync.snapshot(10, [], [])  # events 11..19 were never seen
    assert not sync.synced


def test_futures_rule_uses_pu():
    sync = DiffDepthSync(futures=True)
    sync.snapshot(100, [], [])
    assert sync.diff({"U": 90, "u": 100, "pu": 80, "b": [], "a": []}) is DiffResult.APPLIED  # U <= 100 <= u
    assert sync.diff({"U": 104, "u": 110, "pu": 100, "b": [["1", "1"]], "a": []}) is DiffResult.APPLIED
    with pytest.raises(SequenceGapError):
        sync.diff({"U": 112, "u": 120, "pu": 111, "b": [], "a": []})
