"""``sentinel notifier``: run the notifier service."""

from __future__ import annotations

import asyncio

from services.notifier.settings import Settings
from shared.logs import setup_logging
from shared.runtime import connect, redis_url_or_embedded, run_service


async def _serve(settings: Settings) -> None:
    from services.notifier.app import NotifierApp

    with redis_url_or_embedded(settings.redis_url, settings.data_dir) as url:
        redis = connect(url)
        try:
            app = NotifierApp(settings, redis)
            await run_service("notifier", app.run)
        finally:
            await redis.aclose()


def main(config_file: str | None = None) -> None:
    settings = Settings.load(config_file)
    setup_logging(settings.log_level)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
