"""Book metrics and wall events on the books rebuilt from Binance's real diffs, against pandas computations.

The reference works on DataFrames of the whole book (object dtype holding the exact Decimals), filters bands with
boolean masks, takes medians with ``statistics.median`` and walls with sort_values/merge; quotients use Python's
default decimal context (28 digits, like the module's).
"""

from __future__ import annotations

import statistics
from decimal import Decimal

import pandas as pd

from shared.orderbook.binance import DiffDepthSync, DiffResult
from shared.orderbook.book import L2Book, parse_levels
from shared.orderbook.metrics import book_metrics
from shared.orderbook.walls import WallTracker
from shared.schemas import Trade
from tests.unit.orderbook.captures import binance_capture

BANDS = (Decimal(5), Decimal(10), Decimal(25))


def _states(every: int = 1):
    """(book, its depth event time E) after every ``every``-th applied diff of the 2024-08-08 capture, plus the
    snapshot's price range and every trade of the capture."""
    frames = binance_capture("20240808")
    snap = next(f for f in frames if "lastUpdateId" in f)
    floor, ceiling = Decimal(snap["bids"][-1][0]), Decimal(snap["asks"][-1][0])
    trades = [Trade(d["t"], d["T"], Decimal(d["p"]), Decimal(d["q"]), not d["m"])
              for f in frames if f.get("stream", "").endswith("@trade") for d in (f["data"],)]
    sync = DiffDepthSync()
    n = 0
    for f in frames:
        if "lastUpdateId" in f:
            sync.snapshot(f["lastUpdateId"], parse_levels(f["bids"]), parse_levels(f["asks"]))
        elif f.get("stream", "").endswith("@depth@100ms") and sync.diff(f["data"]) is DiffResult.APPLIED:
            n += 1
            if n % every == 0:
                yield sync.book, (floor, ceiling), trades


def _frame(levels) -> pd.DataFrame:
    return pd.DataFrame([(p, s) for p, s in levels], columns=["price", "size"], dtype=object)


def _reference_metrics(book: L2Book, floor: Decimal, ceiling: Decimal) -> dict:
    bids, asks = _frame(book.bids.sizes.items()), _frame(book.asks.sizes.items())
    b, a = bids["price"].max(), asks["price"].min()
    qb = bids.loc[bids["price"] == b, "size"].iloc[0]
    qa = asks.loc[asks["price"] == a, "size"].iloc[0]
    mid = (b + a) / 2
    out = {"mid": mid, "spread": a - b, "spread_bps": (a - b) * 10000 / mid,
           "microprice": (b * qa + a * qb) / (qa + qb), "bands": []}
    for bps in BANDS:
        lo, hi = mid - mid * bps / 10000, mid + mid * bps / 10000
        bb = bids[bids["price"] >= lo].assign(dist=lambda d: mid - d["price"])
        aa = asks[asks["price"] <= hi].assign(dist=lambda d: d["price"] - mid)
        bw = bb.sort_values(["size", "dist"], ascending=[False, True]).iloc[0]
        aw = aa.sort_values(["size", "dist"], ascending=[False, True]).iloc[0]
        bid_base, ask_base = bb["size"].sum(), aa["size"].sum()
        out["bands"].append({
            "bid_base": bid_base, "ask_base": ask_base,
            "bid_quote": (bb["price"] * bb["size"]).sum(), "ask_quote": (aa["price"] * aa["size"]).sum(),
            "imbalance": (bid_base - ask_base) / (bid_base + ask_base),
            "bid_levels": len(bb), "ask_levels": len(aa),
            "bid_wall": (bw["price"], bw["size"]), "ask_wall": (aw["price"], aw["size"]),
            "bid_wall_ratio": bw["size"] / statistics.median(list(bb["size"])),
            "ask_wall_ratio": aw["size"] / statistics.median(list(aa["size"])),
            "complete": lo >= floor and hi <= ceiling})
    return out


def test_metrics_equal_a_pandas_computation_on_real_books():
    compared = 0
    for book, (floor, ceiling), _ in _states(every=20):
        got = book_metrics(book, BANDS, floor, ceiling)
        ref = _reference_metrics(book, floor, ceiling)
        assert (got.mid, got.spread, got.spread_bps, got.microprice) == (
            ref["mid"], ref["spread"], ref["spread_bps"], ref["microprice"])
        for band, rb in zip(got.bands, ref["bands"], strict=True):
            assert {k: (tuple(v) if k.endswith("_wall") else v) for k, v in band._asdict().items() if k != "bps"} \
                == rb, band.bps
        compared += 1
    assert compared > 150


def test_a_band_past_the_snapshot_edge_is_flagged_incomplete():
    book = L2Book()
    book.load([(Decimal("100"), Decimal("1")), (Decimal("99"), Decimal("1"))], [(Decimal("101"), Decimal("2"))])
    m = book_metrics(book, (10, 200), bid_floor=Decimal("99"), ask_ceiling=Decimal("102"))
    assert [b.complete for b in m.bands] == [True, False]  # 200 bps reaches 98.49 < 99
    assert m.bands[1].bid_base == 2 and m.bands[1].imbalance == 0
    # 10 bps of 100.5 is 100.3995..100.6005: narrower than the spread, nothing in it
    assert m.bands[0][1:] == (0, 0, 0, 0, None, 0, 0, None, None, None, None, True)


def _reference_wall_events(states, trades, bps, ratio, min_size, eaten_fraction) -> list[tuple]:
    """Walls of every state from DataFrames; events by comparing consecutive states; trades attributed to the
    window (previous state's E, this state's E] with pd.cut."""
    tdf = pd.DataFrame([(t.ts, t.price, t.amount, t.is_buy) for t in trades],
                       columns=["ts", "price", "amount", "is_buy"])
    events: list[tuple] = []
    prev: dict | None = None
    prev_ts = None
    for book, ts in states:
        bids, asks = _frame(book.bids.sizes.items()), _frame(book.asks.sizes.items())
        mid = (bids["price"].max() + asks["price"].min()) / 2
        cur = {}
        for side, df, inband in (("bid", bids, bids["price"] >= mid - mid * bps / 10000),
                                 ("ask", asks, asks["price"] <= mid + mid * bps / 10000)):
            band = df[inband]
            thr = max(ratio * statistics.median(list(band["size"])), min_size)
            cur[side] = band[band["size"] >= thr].set_index("price")["size"].to_dict()
        window = tdf[(tdf["ts"] > prev_ts) & (tdf["ts"] <= ts)] if prev_ts is not None else tdf.iloc[:0]
        for side, df in (("bid", bids), ("ask", asks)):
            before = prev[side] if prev is not None else {}
            for p in sorted(set(cur[side]) - set(before), reverse=side == "bid"):
                events.append(("appeared", side, p, cur[side][p], cur[side][p], Decimal(0), ts))
            gone = pd.DataFrame({"price": sorted(set(before) - set(cur[side]), reverse=side == "bid")}, dtype=object)
            gone = gone.merge(df, on="price", how="left")
            for p, now in zip(gone["price"], gone["size"], strict=True):
                remaining = Decimal(0) if pd.isna(now) else now
                lost = before[p] - remaining
                if lost <= 0:
                    continue
                hit = window[~window["is_buy"] & (window["price"] <= p)] if side == "bid" else \
                    window[window["is_buy"] & (window["price"] >= p)]
                traded = sum(hit["amount"], Decimal(0))
                kind = "eaten" if traded >= eaten_fraction * lost else "pulled"
                events.append((kind, side, p, before[p], remaining, traded, ts))
        prev, prev_ts = cur, ts
    return events


def test_wall_events_equal_a_scan_of_the_rebuilt_books_and_trades():
    bps, ratio, min_size, fraction = Decimal(10), Decimal(10), Decimal(1), Decimal("0.5")
    tracker = WallTracker(bps, ratio, min_size, fraction)
    got: list[tuple] = []
    states = []
    prev_ts = None
    trades: list[Trade] = []
    i = 0
    for book, _, trades in _states(every=1):
        window = []
        while i < len(trades) and trades[i].ts <= book.ts:  # trades arrive in trade time order here
            if prev_ts is not None and trades[i].ts > prev_ts:
                window.append(trades[i])
            i += 1
        got.extend(tuple(e) for e in tracker.update(book, window))
        copy = L2Book()
        copy.load(book.bids.sizes.items(), book.asks.sizes.items(), book.update_id, book.ts)
        states.append((copy, book.ts))
        prev_ts = book.ts
        if len(states) == 1200:
            break
    assert all(a.ts <= b.ts for a, b in zip(trades, trades[1:]))  # what the window walk above relies on
    ref = _reference_wall_events(states, trades, bps, ratio, min_size, fraction)
    assert got == ref
    kinds = {k: sum(1 for e in got if e[0] == k) for k in ("appeared", "pulled", "eaten")}
    assert all(kinds.values()), kinds  # every kind of event is exercised (507, 433 and 3 here)


def _book(bids, asks, ts) -> L2Book:
    book = L2Book()
    book.load([(Decimal(p), Decimal(q)) for p, q in bids], [(Decimal(p), Decimal(q)) for p, q in asks], ts=ts)
    return book


def test_wall_lifecycle_by_hand():
    """A 9-lot bid among 1-lots appears; the same wall half traded then gone is eaten; a gone ask wall with no
    trade is pulled; a wall that only leaves the band (mid moved) raises nothing."""
    tracker = WallTracker(bps=100, min_ratio=5)
    small = [("99.9", "1"), ("99.8", "1"), ("99.7", "1")]
    ev = tracker.update(_book([("100", "1"), ("99.5", "9"), *small], [("101", "1"), ("101.2", "1"), ("101.5", "8")], 1))
    assert [(e.kind, e.side, e.price) for e in ev] == [("appeared", "bid", Decimal("99.5")),
                                                        ("appeared", "ask", Decimal("101.5"))]
    sold = [Trade(1, 2, Decimal("99.5"), Decimal("5"), False), Trade(2, 2, Decimal("101.5"), Decimal("1"), False)]
    ev = tracker.update(_book([("100", "1"), *small], [("101", "1"), ("101.2", "1")], 2), sold)
    assert [(e.kind, e.side, e.price, e.size, e.remaining, e.traded) for e in ev] == [
        ("eaten", "bid", Decimal("99.5"), Decimal(9), Decimal(0), Decimal(5)),   # 5 >= half of 9 sold into it
        ("pulled", "ask", Decimal("101.5"), Decimal(8), Decimal(0), Decimal(0))]  # a taker *sell* cannot hit an ask
    tracker.update(_book([("100", "1"), ("99.5", "9"), *small], [("101", "1")], 3))
    ev = tracker.update(_book([("110", "1"), ("99.5", "9")], [("111", "1")], 4))  # mid 110.5: 99.5 is out of band
    assert ev == []
