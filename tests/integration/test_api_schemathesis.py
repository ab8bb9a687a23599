"""A bounded schemathesis run against the live API (uvicorn on a real redis with data): no 5xx, responses that
match the OpenAPI document (status codes, content types, headers, schemas).

Checks left out, and why: ``positive_data_acceptance`` (the rule schema cannot say everything the engine checks on
submission — message placeholders, indicator operand shapes — so schema-valid rules may rightly get 422),
``negative_data_rejection`` (rules are validated exactly like the rules file, whose pydantic lax mode accepts e.g.
``0`` for a boolean), ``allow_header_conformance`` (Starlette answers OPTIONS with the Allow of the first route
matching the path, not of all methods declared on it).
"""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal
from pathlib import Path

from shared import streams
from shared.bus import Bus
from shared.schemas import Alert, Candle, pack
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from tests.integration.test_api_auth import serving
from tests.support.candles import candles_stream, register_series

ST = Path(sys.executable).parent / "st"


async def seed(redis) -> None:
    bus = Bus(redis)
    for i in range(20):
        p = Decimal("100.5") + i
        c = Candle(exchange="binance", symbol="BTC/USDT", timeframe="1m", ts=i * 60_000, open=p, high=p + 1,
                   low=p - 1, close=p, volume=Decimal(2), buy_volume=Decimal(1), sell_volume=Decimal(1))
        await bus.publish(candles_stream("binance", "BTC/USDT", "1m"), c.encode())
        a = Alert(id=f"a{i}", rule="r", exchange="binance", symbol="BTC/USDT", timeframe="1m", ts=i * 60_000,
                  fired_at=(i + 1) * 60_000, price=p)
        await bus.publish(streams.part_alerts(partition_of("binance", "BTC/USDT", DEFAULT_PARTITIONS)), a.encode())
    await register_series(redis, ("binance", "BTC/USDT", "1m"))
    await redis.hset(streams.part_rule_state(partition_of("binance", "BTC/USDT", DEFAULT_PARTITIONS)), "fp", pack({"rule": "r", "exchange": "binance", "symbol": "BTC/USDT",
                                                     "timeframe": "1m", "state": "firing", "last_fired": 60_000}))
    await redis.hset(streams.RULES, "r", "name: r\nsymbols: [BTC/USDT]\ncondition: {left: close, op: above, "
                                         "right: 100}\n")


async def test_schemathesis_finds_no_server_errors_and_no_schema_violations(redis_url, redis, tmp_path):
    await seed(redis)
    async with serving(redis_url, api_token="t") as api:
        proc = await asyncio.create_subprocess_exec(
            str(ST), "run", f"{api.url}/openapi.json", "--checks", "all",
            "--exclude-checks", "positive_data_acceptance,negative_data_rejection,allow_header_conformance",
            "-H", "Authorization: Bearer t", "--max-examples", "5", "--phases", "examples,fuzzing,stateful",
            "--seed", "7", "--generation-database", "none", "--report-dir", str(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
        out, _ = await asyncio.wait_for(proc.communicate(), 100)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "Tested: 17" in text or "Tested:" in text
