"""The comparisons that decide a chaos run, each against something computed independently of the services:

- trades: the ids in the trades streams against the recording read with pandas (each exactly once, same values);
- candles: every closed candle of every timeframe against a plain group-by of the recording's trades (integers scaled
  by 10**8: exact), flat candles at the previous close where a bucket has no trade;
- alerts: what the webhook receiver (honouring Idempotency-Key) and the JSONL file got against a clean
  ``sentinel backtest`` of the same recordings and rules (ids and values).

Entries the harness injected (``inject``) are left out by entry id; anything they changed shows as a difference.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pandas as pd
from redis.asyncio import Redis

from shared.bus import FIELD
from shared.errors import DecodeError
from shared.feed_codec import decode_feed
from shared.schemas import Candle, GapMarker, TradeBatch
from shared.timeframes import timeframe_ms
from tests.support.chaos.layout import Pair

SCALE = 10**8  # every price and amount of these recordings has at most 8 decimals
ALERT_FIELDS = ("rule", "exchange", "symbol", "timeframe", "ts", "fired_at", "price", "value", "state", "message")
CANDLE_FIELDS = ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "quote_volume", "trades")
SHOWN = 20  # at most this many examples of each kind of difference in a report


def scaled(value: str | Decimal, scale: int = SCALE) -> int:
    exact = Decimal(value) * scale
    if exact != exact.to_integral_value():
        raise ValueError(f"{value} has more than 8 decimals")
    return int(exact)


def recording(path: Path) -> pd.DataFrame:
    """A recording read with pandas, not sentinel's readers: columns id, ts (ms), price and amount (scaled ints),
    buy (taker bought). The generic layout (``timestamp,price,amount,side[,id]``; rows without ids numbered 1..n, as
    the trades contract says) or Binance's public-data layout."""
    with open(path) as fh:
        generic = fh.readline().startswith("timestamp")
    if generic:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        ids = raw["id"] if "id" in raw and (raw["id"] != "").all() else pd.Series(range(1, len(raw) + 1)).astype(str)
        df = pd.DataFrame({"id": ids.astype("int64"), "ts": raw["timestamp"].astype("int64"),
                           "price": raw["price"], "amount": raw["amount"], "buy": raw["side"].str.lower() == "buy"})
    else:
        raw = pd.read_csv(path, header=None, dtype=str)
        ts = raw[4].astype("int64")
        df = pd.DataFrame({"id": raw[0].astype("int64"), "ts": ts.where(ts < 10**14, ts // 1000),
                           "price": raw[1], "amount": raw[2], "buy": raw[5].str.lower() != "true"})
    df["price"] = df["price"].map(scaled)
    df["amount"] = df["amount"].map(scaled)
    return df


def reference_candles(trades: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """OHLCV per bucket by group-by on ``ts // length``, every bucket from the first trade's to the last's (flat at
    the previous close where empty). quote_volume is scaled by 10**16 (price x amount), summed as Python ints."""
    length = timeframe_ms(timeframe)
    df = trades.assign(bucket=trades["ts"] // length * length,
                       buy_amount=trades["amount"].where(trades["buy"], 0),
                       sell_amount=trades["amount"].where(~trades["buy"], 0),
                       quote=[p * a for p, a in zip(trades["price"].tolist(), trades["amount"].tolist())])
    g = df.groupby("bucket", sort=True)
    out = pd.DataFrame({"open": g["price"].first(), "high": g["price"].max(), "low": g["price"].min(),
                        "close": g["price"].last(), "volume": g["amount"].sum(), "buy_volume": g["buy_amount"].sum(),
                        "sell_volume": g["sell_amount"].sum(), "quote_volume": g["quote"].agg(lambda s: sum(s)),
                        "trades": g["price"].count()})
    full = range(int(out.index[0]), int(out.index[-1]) + length, length)
    out = out.reindex(full)
    out["close"] = out["close"].ffill()
    for col in ("open", "high", "low"):
        out[col] = out[col].fillna(out["close"])
    for col in ("volume", "buy_volume", "sell_volume", "trades"):
        out[col] = out[col].fillna(0)
    out["quote_volume"] = out["quote_volume"].map(lambda v: 0 if pd.isna(v) else v)
    return out


async def xrange_all(redis: Redis, stream: str, page: int = 2000) -> list:
    """Every entry of ``stream`` as XRANGE gives them (id, fields), oldest first, read page by page."""
    out: list = []
    start = "-"
    while True:
        got = await redis.xrange(stream, min=start, count=page)
        out += got
        if len(got) < page:
            return out
        start = "(" + got[-1][0].decode()


async def read_entries(redis: Redis, stream: str, skip: set[str]) -> list[tuple[str, bytes]]:
    """Every entry of ``stream`` but those in ``skip`` (entry ids), oldest first: (id, the message's bytes)."""
    return [(eid.decode(), fields.get(FIELD, b"")) for eid, fields in await xrange_all(redis, stream)
            if eid.decode() not in skip]


def compare_trades(expected: pd.DataFrame, entries: list[tuple[str, bytes]]) -> dict:
    """The trades published (decoded from the stream's entries) against the recording: each id exactly once, with
    the recording's time, price, amount and side."""
    got: list[tuple] = []
    undecodable, gaps = [], []
    for eid, raw in entries:
        try:
            msg = decode_feed(raw)
        except DecodeError as exc:
            undecodable.append({"entry": eid, "error": str(exc)[:200]})
            continue
        if isinstance(msg, TradeBatch):
            got += [(int(t[0]), t[1], scaled(t[2]), scaled(t[3]), bool(t[4])) for t in msg.trades]
        elif isinstance(msg, GapMarker):
            gaps.append({"entry": eid, "from": msg.start, "to": msg.end, "reason": msg.reason})
    counts = Counter(t[0] for t in got)
    want = {int(r.id): (int(r.id), int(r.ts), int(r.price), int(r.amount), bool(r.buy))
            for r in expected.itertuples(index=False)}
    first = {}
    for t in got:
        first.setdefault(t[0], t)
    missing = sorted(set(want) - set(counts))
    return {"expected": len(want), "published": len(got), "distinct": len(counts),
            "missing": len(missing), "missing_ids": missing[:SHOWN],
            "doubled": sum(1 for n in counts.values() if n > 1),
            "doubled_ids": sorted(i for i, n in counts.items() if n > 1)[:SHOWN],
            "unexpected_ids": sorted(set(counts) - set(want))[:SHOWN],
            "unexpected": len(set(counts) - set(want)),
            "differing": [{"id": i, "got": first[i], "want": want[i]} for i in sorted(set(want) & set(first))
                          if first[i] != want[i]][:SHOWN],
            "gaps": gaps, "undecodable": undecodable[:SHOWN]}


def _candle_row(c: Candle) -> tuple:
    return (scaled(c.open), scaled(c.high), scaled(c.low), scaled(c.close), scaled(c.volume), scaled(c.buy_volume),
            scaled(c.sell_volume), scaled(c.quote_volume, SCALE * SCALE), c.trades)


def compare_candles(expected: pd.DataFrame, entries: list[tuple[str, bytes]]) -> dict:
    """The closed candles of one series against ``reference_candles``: one candle per bucket (a revision is
    counted), none twice, every bucket there, every field equal."""
    versions: Counter = Counter()
    final: dict[int, Candle] = {}
    undecodable = []
    for eid, raw in entries:
        try:
            c = Candle.decode(raw)
        except DecodeError as exc:
            undecodable.append({"entry": eid, "error": str(exc)[:200]})
            continue
        if not c.closed:
            continue
        versions[(c.ts, c.revision)] += 1
        if c.ts not in final or c.revision >= final[c.ts].revision:
            final[c.ts] = c
    want = {int(ts): tuple(int(row[f]) for f in CANDLE_FIELDS) for ts, row in expected.iterrows()}
    differing = [{"ts": ts, "got": dict(zip(CANDLE_FIELDS, _candle_row(final[ts]))),
                  "want": dict(zip(CANDLE_FIELDS, want[ts]))}
                 for ts in sorted(set(want) & set(final)) if _candle_row(final[ts]) != want[ts]]
    return {"expected": len(want), "compared": len(set(want) & set(final)),
            "missing": sorted(set(want) - set(final))[:SHOWN], "missing_count": len(set(want) - set(final)),
            "extra": sorted(set(final) - set(want))[:SHOWN], "extra_count": len(set(final) - set(want)),
            "doubled": sorted(k for k, n in versions.items() if n > 1)[:SHOWN],
            "doubled_count": sum(1 for n in versions.values() if n > 1),
            "revised": sum(1 for ts, rev in versions if rev > 0),
            "differing": differing[:SHOWN], "differing_count": len(differing), "undecodable": undecodable[:SHOWN]}


def _alert_key(record: dict) -> tuple:
    out = []
    for f in ALERT_FIELDS:
        value = record.get(f)
        out.append(Decimal(value) if f in ("price", "value") and value is not None else value)
    return tuple(out)


def compare_alerts(expected: list[dict], sinks: dict[str, list[dict]]) -> dict:
    """Each sink's delivered alerts (``sinks``: name -> records, repeats included) against ``expected``: missing,
    extra, duplicated ids; same id with other values."""
    want = {a["id"]: a for a in expected}
    out: dict = {"expected": len(want)}
    for name, records in sinks.items():
        counts = Counter(r["id"] for r in records)
        first: dict[str, dict] = {}
        for r in records:
            first.setdefault(r["id"], r)
        missing = sorted(set(want) - set(counts))
        extra = sorted(set(counts) - set(want))
        doubled = {i: n for i, n in counts.items() if n > 1}
        differing = [{"id": i, "got": dict(zip(ALERT_FIELDS, map(str, _alert_key(first[i])))),
                      "want": dict(zip(ALERT_FIELDS, map(str, _alert_key(want[i]))))}
                     for i in sorted(set(want) & set(first)) if _alert_key(first[i]) != _alert_key(want[i])]
        out[name] = {"delivered": len(counts), "missing": len(missing), "missing_ids": missing[:SHOWN],
                     "extra": len(extra), "extra_ids": extra[:SHOWN], "duplicated": len(doubled),
                     "duplicated_ids": dict(list(doubled.items())[:SHOWN]), "differing": len(differing),
                     "differing_examples": differing[:SHOWN]}
    return out


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series_of(entries_by_stream: dict[str, list[tuple[str, bytes]]]) -> dict[tuple[str, str, str], list]:
    """Candle entries regrouped by the (exchange, symbol, timeframe) they say they are of (not by stream name:
    partitioned streams will mix series). Undecodable entries stay under the stream's name."""
    out: dict[tuple[str, str, str], list] = defaultdict(list)
    for stream, entries in entries_by_stream.items():
        for eid, raw in entries:
            try:
                c = Candle.decode(raw)
                out[(c.exchange, c.symbol, c.timeframe)].append((eid, raw))
            except DecodeError:
                out[(stream, "", "")].append((eid, raw))
    return out


def trades_of(entries_by_stream: dict[str, list[tuple[str, bytes]]], pair: Pair) -> list[tuple[str, bytes]]:
    """The trades-stream entries of one pair, by what they say (undecodable ones of the pair's own stream kept)."""
    out = []
    for entries in entries_by_stream.values():
        for eid, raw in entries:
            try:
                msg = decode_feed(raw)
            except DecodeError:
                continue
            if (msg.exchange, msg.symbol) == (pair.exchange, pair.symbol):
                out.append((eid, raw))
    return out
