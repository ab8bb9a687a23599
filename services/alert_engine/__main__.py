"""``python -m services.alert_engine`` / ``sentinel alert-engine``: run alert_engine alone (as docker-compose does)."""

from __future__ import annotations

from shared.runtime import service_main


def main(config_file: str | None = None) -> None:
    from services.alert_engine.app import AlertEngineApp
    from services.alert_engine.settings import Settings

    service_main("alert_engine", Settings, AlertEngineApp, config_file)


if __name__ == "__main__":
    main()
