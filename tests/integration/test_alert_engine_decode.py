"""alert_engine against a real redis-server: malformed candle entries on a partition's candle stream (a float price,
a price that is no number, a missing field, another kind, no msgpack) are dead-lettered with their reason and acked
past, and the well-formed candles around them are evaluated as if the bad ones were not there."""

from __future__ import annotations

from decimal import Decimal

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from shared import streams
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from shared.schemas import Candle, pack, unpack
from tests.support.alerts import read_alerts
from tests.support.engine_candles import publish_candles

EX, SYM, TF, TF_MS, T0 = "binance", "XRP/ETH", "5m", 300_000, 1_570_752_000_000


def _candle(i: int, close: str) -> Candle:
    p = Decimal(close)
    return Candle(exchange=EX, symbol=SYM, timeframe=TF, ts=T0 + i * TF_MS, open=p, high=p, low=p, close=p,
                  volume=Decimal(1), buy_volume=Decimal(1), sell_volume=Decimal(0))


async def test_malformed_candle_entries_are_dead_lettered_and_the_good_ones_evaluated(redis, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"rules:\n  - {{name: up, symbols: [{SYM}], exchange: {EX}, timeframe: {TF}, "
                     "frequency: every_time, condition: {op: crosses_up, right: 10}}\n")
    closes = ["9", "11", "9", "12", "9", "12"]
    good = [_candle(i, c) for i, c in enumerate(closes)]
    p = partition_of(EX, SYM, DEFAULT_PARTITIONS)
    stream = streams.part_candles(p)
    msg = unpack(good[1].encode())
    bad = {  # payload -> what the dead letter's reason names
        pack({**msg, "close": 11.0}): "float",
        pack({**msg, "close": "eleven"}): "close",
        pack({k: v for k, v in msg.items() if k != "ts"}): "ts",
        pack({**msg, "k": "nonsense"}): "nonsense",
        b"\xc1 not msgpack": "msgpack",
    }
    await publish_candles(redis, good[:2])
    for payload in bad:  # between two good bars: evaluated or not, they must not break the crossing state
        await redis.xadd(stream, {streams.FIELD: payload})
    await publish_candles(redis, good[2:])
    app = AlertEngineApp(Settings(rules_file=rules, consumer_name="e1", warmup_bars=10, block_ms=50,
                                  redis_url="redis://unused"), redis)
    await app.drain()
    dead = await redis.xrange(streams.DEAD_LETTER)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(dead) == len(bad), reasons
    for (payload, word), reason in zip(bad.items(), reasons, strict=True):
        assert word in reason, (word, reason)
    # independent expectation: crossings of 10 by the good closes alone
    want = [good[i].ts for i in range(1, len(closes)) if Decimal(closes[i - 1]) <= 10 < Decimal(closes[i])]
    assert [a.ts for a in await read_alerts(redis) if a.rule == "up"] == want == [good[1].ts, good[3].ts,
                                                                                 good[5].ts]
