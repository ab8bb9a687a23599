"""``sentinel alert_engine``: run the alert engine as its own process."""

from __future__ import annotations

import asyncio

from shared.logs import setup_logging
from shared.runtime import connect, redis_url_or_embedded, run_service


def main(config_file: str | None = None) -> None:
    from services.alert_engine.app import AlertEngineApp
    from services.alert_engine.settings import Settings

    settings = Settings.load(config_file)
    setup_logging(settings.log_level)

    async def _run(stop: asyncio.Event) -> None:
        with redis_url_or_embedded(settings.redis_url, settings.data_dir) as url:
            redis = connect(url)
            try:
                await AlertEngineApp(settings, redis).run(stop)
            finally:
                await redis.aclose()

    asyncio.run(run_service("alert_engine", _run))


if __name__ == "__main__":
    main()
