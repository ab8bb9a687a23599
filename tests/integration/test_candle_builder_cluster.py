"""The candles hop on a 3-master Redis Cluster: market_feed replays real recordings, candle_builder commits each read
in one script of the partition's slot (candles to ``part_candles`` and ``series_candles`` with the same entry ids,
registry, state, offset), and every closed candle equals pandas' resample of the recording."""

from __future__ import annotations

import asyncio
import zlib

import httpx
from redis.asyncio.cluster import RedisCluster

from sentinel.export import closed_candles_of
from services.api.app import create_app
from services.api.settings import Settings as ApiSettings
from services.candle_builder.app import CandleBuilderApp
from services.market_feed.app import MarketFeedApp
from services.market_feed.settings import Settings as FeedSettings
from shared import streams
from shared.bus import FIELD
from shared.candle_series import all_series
from shared.partitioned import caught_up
from shared.schemas import Candle
from tests.conftest import shared_data
from tests.support.candles import RECORDINGS, TIMEFRAMES, check_against_pandas, settings_for

PARTITIONS = 4


def _partition(exchange: str, symbol: str) -> int:
    """Independent of shared.partitions: the documented CRC-32 of "exchange|symbol"."""
    return zlib.crc32(f"{exchange}|{symbol}".encode()) % PARTITIONS


async def _entries(client: RedisCluster, key: str) -> list[tuple[bytes, Candle]]:
    return [(entry_id, Candle.decode(fields[FIELD])) for entry_id, fields in await client.xrange(key)]


async def test_replayed_recordings_build_exact_candles_on_a_redis_cluster(redis_cluster, tmp_path):
    client = RedisCluster.from_url(redis_cluster.url)
    await client.flushall()
    names = ["btcusdt", "kraken", "xrpeth"]
    try:
        for name in names:  # one replaying feed per recording, as ``sentinel backtest`` runs them
            exchange, symbol, rel = RECORDINGS[name]
            feed = MarketFeedApp(FeedSettings(mode="replay", replay_file=shared_data(rel), exchange=exchange,
                                              symbol=symbol, batch_size=100, partitions=PARTITIONS,
                                              redis_url=redis_cluster.url), client)
            await asyncio.wait_for(feed.run(asyncio.Event()), timeout=120)
            assert feed.done
        parts = {_partition(*RECORDINGS[n][:2]) for n in names}
        nodes = {client.get_node_from_key(streams.part_trades(p)).name for p in parts}
        assert len(nodes) >= 2, "the pairs' partitions should span nodes of the cluster"

        settings = settings_for(redis_cluster.url, partitions=PARTITIONS)
        app = CandleBuilderApp(settings, client)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        deadline = asyncio.get_running_loop().time() + 120
        while not (app.workers.owned and await caught_up(client, PARTITIONS, streams.GROUP_CANDLE_BUILDER,
                                                         streams.part_trades)):
            if task.done():
                task.result()
            assert asyncio.get_running_loop().time() < deadline, app.status()
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 15)

        part_ids: dict[int, dict[bytes, Candle]] = {}
        for p in parts:
            part_ids[p] = dict(await _entries(client, streams.part_candles(p)))
        for name in names:
            exchange, symbol, rel = RECORDINGS[name]
            p = _partition(exchange, symbol)
            registry = {m.decode() for m in await client.smembers(streams.part_candle_registry(p))}
            assert {f"{exchange}|{symbol}|{tf}" for tf in TIMEFRAMES} <= registry
            for tf in TIMEFRAMES:
                key = f"sentinel:{{p{p}}}:candles:{exchange}:{symbol}:{tf}"
                assert key == streams.series_candles(p, exchange, symbol, tf)
                entries = await _entries(client, key)
                check_against_pandas([c for _, c in entries], shared_data(rel), tf)
                # the same entries, with the same ids, in the partition's stream
                for entry_id, candle in entries:
                    assert part_ids[p].get(entry_id) == candle, (name, tf, entry_id)
        # the readers' helpers work across the cluster's nodes: every partition's registry, every series' stream
        wanted = sorted((*RECORDINGS[n][:2], tf) for n in names for tf in TIMEFRAMES)
        assert await all_series(client, PARTITIONS) == wanted
        exported = await closed_candles_of(client, wanted, partitions=PARTITIONS)
        for name in names:
            exchange, symbol, rel = RECORDINGS[name]
            for tf in TIMEFRAMES:
                check_against_pandas(exported[(exchange, symbol, tf)], shared_data(rel), tf)
        # the API reads them there too: the series list and each series' candles (and its in-progress one)
        api = create_app(ApiSettings(partitions=PARTITIONS, services=["candle_builder"]), client)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test") as http:
            listed = (await http.get("/series")).json()["series"]
            assert sorted((s["exchange"], s["symbol"], s["timeframe"]) for s in listed) == wanted
            for name in names:
                exchange, symbol, rel = RECORDINGS[name]
                body = (await http.get(f"/candles/{exchange}/{symbol.replace('/', '-')}/1m",
                                       params={"limit": 5000, "live": "true"})).json()
                check_against_pandas([Candle.model_validate(c) for c in body["candles"]], shared_data(rel), "1m")
                assert body["live"] is None or body["live"]["ts"] > body["candles"][-1]["ts"]
        # and nothing in a partition's stream that is not in its series' stream
        total = 0
        for name in names:
            exchange, symbol, _ = RECORDINGS[name]
            for tf in TIMEFRAMES:
                total += await client.xlen(streams.series_candles(_partition(exchange, symbol), exchange, symbol, tf))
        assert sum(len(ids) for ids in part_ids.values()) == total
    finally:
        await client.flushall()
        await client.aclose()
