"""``python -m services.market_feed`` / ``sentinel market-feed``: run market_feed alone."""

from __future__ import annotations

import asyncio

from services.market_feed.app import SERVICE, MarketFeedApp
from services.market_feed.settings import Settings
from shared.logs import setup_logging
from shared.runtime import connect, redis_url_or_embedded, run_service


def main(config_file: str | None = None) -> None:
    settings = Settings.load(config_file)
    setup_logging(settings.log_level)
    with redis_url_or_embedded(settings.redis_url, settings.data_dir) as url:
        asyncio.run(_run(settings, url))


async def _run(settings: Settings, url: str) -> None:
    redis = connect(url)
    try:
        app = MarketFeedApp(settings, redis)
        await run_service(SERVICE, app.run)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    main()
