"""Pure parts of the API: symbol spelling, token levels, bind address, CVD, live subscription parsing."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest

from services.api import live, queries
from services.api.app import Access, bind_host, normalize_symbol
from services.api.settings import Settings
from shared import streams
from shared.schemas import Candle, live_channels


@pytest.mark.parametrize(("given", "expected"), [
    ("BTC-USDT", "BTC/USDT"), ("BTC/USDT", "BTC/USDT"), ("BTC-USDT:USDT", "BTC/USDT:USDT"), ("BTC/USD-P", "BTC/USD-P"),
])
def test_symbol_spellings(given, expected):
    assert normalize_symbol(given) == expected


def test_token_levels():
    both = Access(Settings(api_token="w", api_read_token="r"))
    assert [both.level(t) for t in ("w", "r", "x", None)] == ["write", "read", None, None]
    assert Access(Settings()).level(None) == "write"  # no token configured: open (and loopback only)
    read_only = Access(Settings(api_read_token="r"))
    assert read_only.level("r") == "read" and read_only.level("w") is None


def test_bind_host_is_loopback_without_a_token():
    assert bind_host(Settings(host="0.0.0.0")) == "127.0.0.1"
    assert bind_host(Settings(host="0.0.0.0", api_token="t")) == "0.0.0.0"
    assert bind_host(Settings(host="::1")) == "::1"


def test_cvd_matches_pandas_cumsum():
    def c(i, buy, sell, closed=True):
        return Candle(exchange="x", symbol="A/B", timeframe="1m", ts=i * 60_000, open=1, high=1, low=1, close=1,
                      volume=Decimal(buy) + Decimal(sell), buy_volume=Decimal(buy), sell_volume=Decimal(sell),
                      closed=closed)
    closed = [c(0, "1.5", "0.25"), c(1, "0.1", "2"), c(2, "3", "3")]
    live_bar = c(3, "0.7", "0.2", closed=False)
    got = queries.cvd(closed, live_bar)
    df = pd.DataFrame({"buy": [1.5, 0.1, 3, 0.7], "sell": [0.25, 2, 3, 0.2]})
    expected = (df["buy"] - df["sell"]).cumsum()
    assert [ts for ts, _, _ in got] == [0, 60_000, 120_000, 180_000]
    assert [float(total) for _, _, total in got] == pytest.approx(list(expected))
    assert got[-1][2] == Decimal("-0.15")  # exact decimals
    assert queries.cvd(closed, c(2, "9", "0", closed=False))[-1][0] == 120_000  # an older live bar is ignored


def test_live_subscription_parsing():
    assert live.parse_series(["binance|BTC-USDT|1m"]) == [("binance", "BTC/USDT", "1m")]
    with pytest.raises(ValueError, match="exchange\\|symbol\\|timeframe"):
        live.parse_series(["binance|BTC-USDT"])
    channels = live_channels(True, [("binance", "BTC/USDT", "1m")], [("binance", "BTC/USDT")])
    assert set(channels) == {streams.CHANNEL_ALERTS, streams.channel_candles("binance", "BTC/USDT", "1m"),
                             streams.channel_candles_live("binance", "BTC/USDT", "1m"),
                             streams.channel_tickers("binance", "BTC/USDT")}
