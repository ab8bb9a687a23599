from __future__ import annotations

from datetime import datetime, timezone

import pytest

from shared.config import ServiceSettings
from shared.errors import ConfigError
from shared.timeframes import bucket_start, timeframe_ms


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


@pytest.mark.parametrize("tf, ts, start", [
    ("1m", "2024-08-09T00:04:59.999", "2024-08-09T00:04:00"),
    ("4h", "2024-08-09T07:59:59", "2024-08-09T04:00:00"),
    ("1d", "2024-08-09T23:00:00", "2024-08-09T00:00:00"),
    ("1w", "2024-08-09T12:00:00", "2024-08-05T00:00:00"),  # a Friday → Monday 5 Aug
    ("1w", "2024-08-05T00:00:00", "2024-08-05T00:00:00"),
    ("1w", "2024-08-04T23:59:59", "2024-07-29T00:00:00"),  # Sunday belongs to the week before
])
def test_buckets_are_utc_aligned_like_exchanges(tf, ts, start):
    assert bucket_start(ms(ts), timeframe_ms(tf)) == ms(start)


def test_unknown_timeframe_is_a_config_error():
    with pytest.raises(ConfigError, match="'7m' is not supported"):
        timeframe_ms("7m")


class _Settings(ServiceSettings):
    section = "market_feed"
    speed: float = 1.0
    symbols: list[str] = []


def test_settings_file_errors_name_file_line_and_field(tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    path = tmp_path / "sentinel.yaml"
    path.write_text("redis_url: redis://127.0.0.1:1/0\nlog_lvl: DEBUG\nmarket_feed:\n  speed: fast\n  bogus: 1\n")
    with pytest.raises(ConfigError) as err:
        _Settings.load(path)
    problems = err.value.problems
    assert f"{path}:2: log_lvl — unknown field (check the spelling)" in problems
    assert f"{path}:5: market_feed.bogus — unknown field (check the spelling)" in problems
    assert any(p.startswith(f"{path}:4: market_feed.speed — ") and "'fast'" in p for p in problems)


def test_settings_sources_environment_beats_file(tmp_path, monkeypatch):
    path = tmp_path / "sentinel.yaml"
    path.write_text("market_feed:\n  speed: 2\n  symbols: [BTC/USDT]\n")
    monkeypatch.setenv("SENTINEL_SPEED", "5")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:7/0")
    settings = _Settings.load(path)
    assert settings.speed == 5 and settings.symbols == ["BTC/USDT"] and settings.redis_url == "redis://127.0.0.1:7/0"


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("market_feed:\n  speed: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: invalid YAML"):
        _Settings.load(path)


def test_unreadable_characters_are_a_config_error_not_a_crash():
    from shared.yamlfile import load_yaml
    with pytest.raises(ConfigError, match=r"rules.yaml:1: invalid YAML"):
        load_yaml("rules:\n  - name: \x00\n", "rules.yaml")
