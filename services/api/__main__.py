"""``python -m services.api`` / ``sentinel api``: run api alone (what docker-compose runs)."""

from __future__ import annotations

from shared.runtime import service_main


def main(config_file: str | None = None) -> None:
    from services.api.app import ApiApp
    from services.api.settings import Settings

    service_main("api", Settings, ApiApp, config_file, extra_grace=5.0)


if __name__ == "__main__":
    main()
