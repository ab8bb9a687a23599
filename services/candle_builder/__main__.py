"""``python -m services.candle_builder`` / ``sentinel candle-builder``: run candle_builder alone (what docker-compose runs)."""

from __future__ import annotations

from shared.runtime import service_main


def main(config_file: str | None = None) -> None:
    from services.candle_builder.app import CandleBuilderApp
    from services.candle_builder.settings import Settings

    service_main("candle_builder", Settings, CandleBuilderApp, config_file)


if __name__ == "__main__":
    main()
