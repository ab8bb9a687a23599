"""Settings of the API (section ``api`` of the settings file; environment ``SENTINEL_API_TOKEN`` etc.)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from shared.config import ServiceSettings

LOOPBACK = "127.0.0.1"
SERVICES = ("market_feed", "candle_builder", "alert_engine", "notifier")


class Settings(ServiceSettings):
    section = "api"

    # SENTINEL_API_HOST / SENTINEL_API_PORT (what docker-compose.yml sets) as well as SENTINEL_HOST / SENTINEL_PORT
    host: str = Field(default=LOOPBACK, validation_alias=AliasChoices("host", "SENTINEL_API_HOST", "SENTINEL_HOST"),
                      description="Address to bind; forced to loopback when no token is set (env SENTINEL_API_HOST).")
    port: int = Field(default=8000, ge=0, le=65535,
                      validation_alias=AliasChoices("port", "SENTINEL_API_PORT", "SENTINEL_PORT"),
                      description="TCP port, 0 = any free port (env SENTINEL_API_PORT).")
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token for every endpoint but /health (env SENTINEL_API_TOKEN).")
    api_read_token: SecretStr | None = Field(
        default=None, description="Bearer token allowed only to read (env SENTINEL_API_READ_TOKEN).")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty = CORS off.")
    services: list[str] = Field(default_factory=lambda: list(SERVICES),
                                description="Services whose heartbeat /health requires.")
    heartbeat_max_age_s: float = Field(default=10.0, gt=0, description="A heartbeat older than this is down.")
    max_consumer_lag: int | None = Field(
        default=10_000, ge=0, description="/health is 503 when a consumer group has more entries than this not yet "
                                          "delivered (null: not checked).")
    max_pending: int | None = Field(
        default=10_000, ge=0, description="/health is 503 when a consumer group has more entries than this delivered "
                                          "but not acked (null: not checked).")
    max_pending_idle_ms: int | None = Field(
        default=120_000, ge=0, description="/health is 503 when a pending entry has waited longer than this for its "
                                           "ack (a consumer died; null: not checked).")
    history_scan_limit: int = Field(default=50_000, gt=0,
                                    description="Most alert-history entries one /alerts/history request reads.")
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    trades_throttle_ms: int = Field(default=100, ge=10, description="The raw-trades channel (docs/channels.md) sends "
                                                                    "a pair's trades at most this often.")
