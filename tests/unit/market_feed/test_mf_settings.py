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


def test_exchange_name_defaults_to_the_ccxt_id_and_must_be_unique(tmp_path):
    path = tmp_path / "sentinel.yaml"
    block = ("market_feed:\n  mode: live\n  exchanges:\n    - {id: binance, symbols: [BTC/USDT]}\n"
             "    - {id: binance, name: %s, symbols: [BTC/USDT], ws_url: ws://127.0.0.1:9443/stream}\n"
             "  books:\n    - {symbols: [BTC/USDT]}\n    - {name: sim, symbols: [BTC/USDT]}\n")
    path.write_text(block % "sim")
    s = Settings.load(path)
    assert [(e.id, e.name) for e in s.exchanges] == [("binance", "binance"), ("binance", "sim")]
    assert [(b.exchange, b.name) for b in s.books] == [("binance", "binance"), ("binance", "sim")]
    path.write_text(block % "binance")  # two entries named binance
    with pytest.raises(ConfigError) as info:
        Settings.load(path)
    text = str(info.value)
    assert "market_feed.exchanges" in text and "'binance' more than once" in text, text
    assert "market_feed.books" not in text


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
