"""alert_engine on book and futures streams (real redis-server): book rules fire on the real 2024-08-08 BTCUSDT book
(snapshots as market_feed publishes them) read from its partition's stream, with the cooldown applied by the commit;
pairs of the same partition no rule names are skipped; a funding rule reads the partition's derivatives stream."""

from __future__ import annotations

from decimal import Decimal

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from shared import streams
from shared.bus import Bus
from shared.derivs_messages import FundingRate
from shared.partitions import partition_of
from tests.support.alerts import count_alerts, read_alerts
from tests.unit.alert_engine.test_ae_feed_operands import _books, _reference

EX, SYM = "binance", "BTC/USDT"


def _other_pair_in(partition: int, partitions: int) -> str:
    """A symbol of another pair that falls in ``partition`` (its entries share the stream)."""
    return next(s for n in range(10_000) if partition_of(EX, s := f"X{n}/USDT", partitions) == partition)


async def test_book_and_funding_rules_fire_through_the_engine(redis, tmp_path):
    books = _books()
    p = partition_of(EX, SYM, 16)
    decoy = _other_pair_in(p, 16)
    fut = ("binanceusdm", "BTC/USDT:USDT")
    (tmp_path / "rules.yaml").write_text(f"""
rules:
  - name: bid_heavy
    exchange: {EX}
    symbols: [{SYM}]
    frequency: every_time
    cooldown: 5s
    condition: {{left: {{imbalance: 10}}, op: greater_than, right: 0.1}}
    message: "{{symbol}} imbalance {{value}}"
  - name: funding_hot
    exchange: {fut[0]}
    symbols: ["{fut[1]}"]
    frequency: every_time
    condition: {{left: funding_rate, op: greater_than, right: 0.0003}}
""")
    bus = Bus(redis)
    entries = []
    for snap, _, _ in books:
        entries.append((streams.part_books(p), snap.encode()))
        # the same book under a pair no rule names, in the same partition's stream: must be skipped
        entries.append((streams.part_books(p), snap.model_copy(update={"symbol": decoy}).encode()))
    await bus.publish_many(entries)
    rates = [Decimal(n) / 10000 for n in (1, 2, 5, 1, 4, 3, 6)]
    fp = partition_of(*fut, 16)
    await bus.publish_many((streams.part_derivs(fp), FundingRate(
        exchange=fut[0], symbol=fut[1], ts=1723161300000 + 8000 * i, mark_price=Decimal("61829.00"),
        index_price=Decimal("61828.58"), funding_rate=r).encode()) for i, r in enumerate(rates))

    settings = Settings(rules_file=tmp_path / "rules.yaml", consumer_name="e1", redis_url="redis://unused",
                        block_ms=20, clock="exchange", batch=50)
    app = AlertEngineApp(settings, redis)
    await app.drain()
    assert {streams.part_books(p), streams.part_derivs(fp)} <= app.streams

    alerts = await read_alerts(redis)
    got = {(a.rule, a.symbol, a.ts) for a in alerts}
    # independent: the updates where the whole-book imbalance holds, thinned by a 5 s cooldown in exchange time
    want, until = set(), None
    for snap, bids, asks in books:
        x = _reference(bids, asks, Decimal(10))["imbalance"]
        if x is not None and x > Decimal("0.1") and (until is None or snap.ts >= until):
            want.add(("bid_heavy", SYM, snap.ts))
            until = snap.ts + 5000
    want |= {("funding_hot", fut[1], 1723161300000 + 8000 * i) for i, r in enumerate(rates) if r > Decimal("0.0003")}
    assert got == want
    assert len(want) >= 5
    heavy = next(a for a in alerts if a.rule == "bid_heavy")
    assert heavy.message.startswith(f"{SYM} imbalance 0.")


async def test_live_the_engine_reads_book_streams_from_when_it_starts(redis, tmp_path):
    """clock wall: snapshots already in the partition's stream when the engine first reads it are the past (no
    alerts); those published after fire. (A backtest, clock exchange, reads the stream whole: the test above.)"""
    books = _books()
    p = partition_of(EX, SYM, 16)
    holds = [s for s, b, a in books if (_reference(b, a, Decimal(10))["imbalance"] or 0) > Decimal("0.1")]
    old, new = holds[:20], holds[20:40]
    (tmp_path / "rules.yaml").write_text(f"""
rules:
  - {{name: bid_heavy, exchange: {EX}, symbols: [{SYM}], frequency: every_time,
     condition: {{left: {{imbalance: 10}}, op: greater_than, right: 0.1}}}}
""")
    bus = Bus(redis)
    await bus.publish_many((streams.part_books(p), s.encode()) for s in old)
    app = AlertEngineApp(Settings(rules_file=tmp_path / "rules.yaml", consumer_name="e1", redis_url="redis://unused",
                                  block_ms=20, clock="wall"), redis)
    await app.drain()
    assert await count_alerts(redis) == 0
    await bus.publish_many((streams.part_books(p), s.encode()) for s in new)
    app = AlertEngineApp(Settings(rules_file=tmp_path / "rules.yaml", consumer_name="e1", redis_url="redis://unused",
                                  block_ms=20, clock="wall"), redis)
    await app.drain()
    alerts = await read_alerts(redis)
    assert [a.ts for a in alerts] == [s.ts for s in new]
