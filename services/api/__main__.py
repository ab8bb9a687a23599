"""``sentinel api``: serve the API alone (what docker-compose runs)."""

from __future__ import annotations

import asyncio

from services.api.app import ApiApp
from services.api.settings import Settings
from shared.logs import setup_logging
from shared.runtime import connect, redis_url_or_embedded, run_service


async def _serve(settings: Settings, url: str) -> None:
    redis = connect(url)
    try:
        await run_service("api", ApiApp(settings, redis).run, grace=settings.shutdown_grace_s + 5)
    finally:
        await redis.aclose()


def main(config_file: str | None = None) -> None:
    """Load settings (section ``api``), start the API; an embedded Redis unless REDIS_URL is set."""
    settings = Settings.load(config_file)
    setup_logging(settings.log_level)
    with redis_url_or_embedded(settings.redis_url, settings.data_dir) as url:
        asyncio.run(_serve(settings, url))


if __name__ == "__main__":
    main()
