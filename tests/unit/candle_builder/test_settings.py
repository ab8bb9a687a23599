"""candle_builder settings: defaults, and errors that name the file, the line and the field."""

from __future__ import annotations

import pytest

from services.candle_builder.settings import Settings
from shared.errors import ConfigError


def test_defaults_build_1m_5m_15m_1h_with_flat_candles():
    s = Settings.load(None)
    assert s.timeframes == ["1m", "5m", "15m", "1h"] and s.flat_candles and s.live_throttle_ms == 250


def test_timeframes_are_sorted_and_checked(tmp_path):
    cfg = tmp_path / "sentinel.yaml"
    cfg.write_text("candle_builder:\n  timeframes: [1h, 1m, 1w]\n")
    assert Settings.load(cfg).timeframes == ["1m", "1h", "1w"]
    cfg.write_text("candle_builder:\n  timeframes: [1m, 7m]\n")
    with pytest.raises(ConfigError) as err:
        Settings.load(cfg)
    assert f"{cfg}:2" in str(err.value) and "timeframes" in str(err.value) and "7m" in str(err.value)


def test_a_typo_is_refused_with_its_line(tmp_path):
    cfg = tmp_path / "sentinel.yaml"
    cfg.write_text("candle_builder:\n  timeframes: [1m]\n  flat_candle: false\n")
    with pytest.raises(ConfigError) as err:
        Settings.load(cfg)
    assert f"{cfg}:3" in str(err.value) and "flat_candle" in str(err.value)


def test_history_bars_is_auto_by_default_and_bounded(tmp_path):
    assert Settings.load(None).history_bars is None  # auto: seeded when the feed is live, off for replays
    path = tmp_path / "s.yaml"
    path.write_text("candle_builder:\n  history_bars: 0\n")
    assert Settings.load(str(path)).history_bars == 0
    path.write_text("candle_builder:\n  history_bars: 50000\n")
    with pytest.raises(ConfigError, match="history_bars"):
        Settings.load(str(path))
