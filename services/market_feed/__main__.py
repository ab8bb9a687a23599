"""``python -m services.market_feed`` / ``sentinel market-feed``: run market_feed alone (what docker-compose runs)."""

from __future__ import annotations

from shared.runtime import service_main


def main(config_file: str | None = None) -> None:
    from services.market_feed.app import MarketFeedApp
    from services.market_feed.settings import Settings

    service_main("market_feed", Settings, MarketFeedApp, config_file)


if __name__ == "__main__":
    main()
