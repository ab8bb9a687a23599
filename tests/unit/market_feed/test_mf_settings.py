"""market_feed settings from a YAML file: live exchanges block, guesses, errors with file and line."""

from __future__ import annotations

import pytest

from services.market_feed.settings import Settings
from shared.errors import ConfigError


def test_live_block_with_url_overrides(tmp_path):
    path = tmp_path / "sentinel.yaml"
    path.write_text("market_feed:\n  mode: live\n  exchanges:\n    - id: binance\n      symbols: [BTC/USDT, ETH/USDT]\n"
                    "      ws_url: ws://127.0.0.1:9443/stream\n      rest_url: http://127.0.0.1:9443/api/v3\n"
                    "    - id: coinbase\n      symbols: [BTC/USD]\n")
    s = Settings.load(path)
    assert [e.id for e in s.exchanges] == ["binance", "coinbase"]
    assert s.exchanges[0].ws_url == "ws://127.0.0.1:9443/stream" and s.exchanges[1].ws_url is None


def test_typo_names_file_line_and_field(tmp_path):
    path = tmp_path / "sentinel.yaml"
    path.write_text("market_feed:\n  mode: live\n  exchanges:\n    - id: binance\n      symbol: [BTC/USDT]\n")
    with pytest.raises(ConfigError) as info:
        Settings.load(path)
    text = str(info.value)
    assert f"{path}:5: market_feed.exchanges[0].symbol" in text


def test_replay_guesses_and_needs_a_file(tmp_path):
    s = Settings(mode="replay", replay_file=tmp_path / "kraken_btcusd" / "XBTUSD-trades-1.csv")
    assert (s.resolved_exchange(), s.resolved_symbol()) == ("kraken", "BTC/USD")
    with pytest.raises(ConfigError, match="cannot guess the symbol"):
        Settings(mode="replay", replay_file=tmp_path / "trades.csv").resolved_symbol()
    with pytest.raises(ConfigError, match="replay_file"):
        Settings.load(None, mode="replay")
