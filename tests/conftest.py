"""Shared fixtures: a real redis-server per test session on a free loopback port (never the machine's 6379)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.embedded_redis import EmbeddedRedis
from shared.runtime import connect

REPO = Path(__file__).resolve().parent.parent
#: Real recorded market data, beside the checkout (see ../shared/data/SOURCES.md). Never copied into the repo.
SHARED_DATA = Path(os.environ.get("SENTINEL_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.fail(f"recorded data missing: {path} (expected ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator:
    """An asyncio client on an emptied database."""
    client = connect(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private redis-server with AOF, for tests that kill and restart it."""
    server = EmbeddedRedis(tmp_path / "redis", persist=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real 3-master Redis Cluster on loopback (tests/support/redis_cluster.py), one per test session."""
    from tests.support.redis_cluster import RedisClusterServers

    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    servers.start()
    yield servers
    servers.stop()


@pytest.fixture(params=["single", "cluster"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator:
    """An asyncio client on an emptied server: once a single redis-server, once the 3-master cluster (a test that
    takes it runs on both)."""
    from redis.asyncio.cluster import RedisCluster

    if request.param == "single":
        redis = connect(request.getfixturevalue("redis_url"))
    else:
        redis = RedisCluster.from_url(request.getfixturevalue("redis_cluster").url)
    await redis.flushall()
    yield redis
    await redis.aclose()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests bound by wall-clock time (``@pytest.mark.perf``) stay out of CI (``CI`` set): a shared machine's load
    decides them there, not the code. Speed is measured in bench/."""
    if not os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason="perf: bound by wall-clock time, not run in CI (see bench/)")
    for item in items:
        if "perf" in item.keywords:
            item.add_marker(skip)
