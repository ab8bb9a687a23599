"""``python -m services.notifier`` / ``sentinel notifier``: run notifier alone (what docker-compose runs)."""

from __future__ import annotations

from shared.runtime import service_main


def main(config_file: str | None = None) -> None:
    from services.notifier.app import NotifierApp
    from services.notifier.settings import Settings

    service_main("notifier", Settings, NotifierApp, config_file)


if __name__ == "__main__":
    main()
