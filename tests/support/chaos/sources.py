"""The recordings a chaos run replays, the rules it runs, and the one settings file every process shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.chaos.layout import Pair

#: name -> (exchange, symbol, file under ../shared/data). Real captures (see ../shared/data/SOURCES.md).
RECORDINGS = {
    "btcusdt": ("binance", "BTC/USDT", "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"),
    "xrpeth": ("binance", "XRP/ETH", "binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv"),
    "kraken": ("kraken", "BTC/USD", "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv"),
}


@dataclass(frozen=True)
class Source:
    """A recording and how it reaches Redis: replayed by ``sentinel market-feed`` (mode replay), or served by
    ``sentinel exchange-sim`` and read by market_feed in live mode (ccxt.pro)."""

    pair: Pair
    path: Path
    live: bool = False


def sources(data_dir: Path, names: list[str], live: str | None) -> list[Source]:
    """The named recordings under ``data_dir``; ``live`` names the one served by the exchange simulator."""
    out = []
    for name in names:
        exchange, symbol, relative = RECORDINGS[name]
        out.append(Source(Pair(exchange, symbol), data_dir / relative, live=name == live))
    return out


#: 1s rules on the busy BTC/USDT capture (on a named exchange: the engine asks for the 1s series before the feed
#: starts, so the builder has it from the first trade, as in the backtest), 1m/5m rules on every pair: indicator
#: crosses, % moves, volume spikes, an RSI level with resolves, cooldowns (state that must survive kills).
RULES = """\
rules:
  - {name: s1_ema_up, exchange: binance, symbols: [BTC/USDT], timeframe: 1s,
     frequency: once_per_bar_close, condition: {left: {ema: 9}, op: crosses_up, right: {ema: 21}}}
  - {name: s1_ema_down, exchange: binance, symbols: [BTC/USDT], timeframe: 1s,
     frequency: once_per_bar_close, condition: {left: {ema: 9}, op: crosses_down, right: {ema: 21}}}
  - {name: s1_rsi_hot, exchange: binance, symbols: [BTC/USDT], timeframe: 1s,
     frequency: once_per_bar_close, notify_on_resolve: true, condition: {left: {rsi: 7}, op: above, right: 75}}
  - {name: s1_move_up, exchange: binance, symbols: [BTC/USDT], timeframe: 1s,
     frequency: once_per_bar_close, cooldown: 20s, condition: {op: moving_up_pct, percent: 0.03, bars: 5}}
  - {name: s1_move_down, exchange: binance, symbols: [BTC/USDT], timeframe: 1s,
     frequency: once_per_bar_close, cooldown: 20s, condition: {op: moving_down_pct, percent: 0.03, bars: 5}}
  - {name: s1_volume, exchange: binance, symbols: [BTC/USDT], timeframe: 1s,
     frequency: once_per_bar_close, cooldown: 10s, condition: {op: volume_spike, factor: 5, period: 30}}
  - {name: m1_close_ema, symbols: "*", timeframe: 1m, frequency: once_per_bar_close,
     condition: {left: close, op: crossing, right: {ema: 5}}}
  - {name: m1_volume, symbols: "*", timeframe: 1m, frequency: once_per_bar_close,
     condition: {op: volume_spike, factor: 3, period: 10}}
  - {name: m1_drop, symbols: "*", timeframe: 1m, frequency: once_per_bar_close, cooldown: 5m,
     condition: {op: moving_down_pct, percent: 0.3, bars: 3}}
  - {name: m5_rsi, symbols: "*", timeframe: 5m, frequency: once_per_bar_close, notify_on_resolve: true,
     condition: {left: {rsi: 7}, op: above, right: 60}}
"""

#: Series the rules name explicitly (exchange and symbol): the run starts the feeds once the engine reads them.
EXPLICIT_SERIES = [(Pair("binance", "BTC/USDT"), "1s")]
BUILDER_TIMEFRAMES = ["1m", "5m", "15m", "1h"]  # candle_builder's default timeframes (not set in the settings)
TIMEFRAMES = ["1s", "1m", "5m", "15m", "1h"]  # every timeframe a series may have: the builder's and the rules'
HOOK = "hook"  # the webhook channel's name
TARGETS = ["jsonl", HOOK]


def pipeline_sections(rules: Path, replicas: int) -> dict:
    """The candle_builder and alert_engine sections, the same for the chaos run and its reference backtest."""
    builder: dict = {"history_bars": 0}  # recordings: no exchange history to seed from (the backtest has none)
    return {"candle_builder": builder,
            "alert_engine": {"rules_file": str(rules), "clock": "exchange"}}  # cooldowns: the recording's time


def notifier_section(jsonl: Path, hook_url: str) -> dict:
    """The notifier of a harness run: the JSONL file and the webhook receiver, no rate limit worth the name."""
    return {"console": False, "jsonl_path": str(jsonl), "channels": {HOOK: hook_url}, "default_channels": TARGETS,
            "rate_per_s": 10_000, "burst": 10_000, "backoff_base_s": 0.05, "backoff_cap_s": 0.5}


def settings_file(path: Path, *, redis_url: str, rules: Path, jsonl: Path, hook_url: str, replicas: int,
                  wait_replicas: int = 0) -> Path:
    """The one settings file of every process of the run (what differs per process goes in its environment)."""
    doc = {
        "redis_url": redis_url,
        "redis_wait_replicas": wait_replicas,
        "log_level": "INFO",
        "market_feed": {"mode": "replay", "backoff_base_s": 0.1, "backoff_cap_s": 1.0, "silence_timeout_s": 2.0},
        **pipeline_sections(rules, replicas),
        "notifier": notifier_section(jsonl, hook_url),
        "exchange_sim": {"wait_for_client": True, "depth": "off", "futures": False},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def backtest_settings(path: Path, rules: Path, replicas: int) -> Path:
    path.write_text(yaml.safe_dump({"log_level": "WARNING", **pipeline_sections(rules, replicas)}, sort_keys=False))
    return path
