"""What a scale-out run replays and runs: real recordings (../shared/data, see its SOURCES.md), a rules file with
indicator rules and a multi-symbol rule, and the one settings file every process shares."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.chaos.layout import Pair
from tests.support.chaos.sources import notifier_section

#: name -> (exchange, symbol, file under ../shared/data).
#:
#: ``btcusdc`` is NOT another market: it is the Binance BTC/USDT capture of 2024-08-08 (its Binance-layout copy)
#: published under a second symbol, so the multi-symbol rule has a second series covering the same exchange time.
#: ../shared/data holds no two real pairs recorded over the same minutes (BTC/USDT 2024, XRP/ETH 2019-10-11, Kraken
#: BTC/USD 2019-07-01), and a rule reading a series of another year compares with a bar that is not there. The two
#: pairs land in different partitions (3 and 4 of 16), so the rule reads across partitions and replicas.
RECORDINGS = {
    "btcusdt": ("binance", "BTC/USDT", "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"),
    "btcusdc": ("binance", "BTC/USDC", "binance_spot_btcusdt/BTCUSDT-trades-2024-08-08-binance-layout.csv"),
    "xrpeth": ("binance", "XRP/ETH", "binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv"),
    "kraken": ("kraken", "BTC/USD", "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv"),
}
DEFAULT_RECORDINGS = ("btcusdt", "btcusdc", "xrpeth", "kraken")


@dataclass(frozen=True)
class Recording:
    name: str
    pair: Pair
    path: Path

    def backtest_input(self, folder: Path) -> Path:
        """A link to the file named so that ``sentinel backtest`` reads its exchange from the folder and its symbol
        from the file name (``<folder>/<exchange>/<BASEQUOTE>-trades.csv``): one backtest of every file."""
        target = folder / self.pair.exchange / f"{self.pair.symbol.replace('/', '')}-trades-{self.name}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(self.path.resolve(), target)
        return target


def recordings(data_dir: Path, names: tuple[str, ...] = DEFAULT_RECORDINGS) -> list[Recording]:
    out = []
    for name in names:
        exchange, symbol, relative = RECORDINGS[name]
        out.append(Recording(name, Pair(exchange, symbol), data_dir / relative))
    return out


#: Indicator rules on 1s bars of the two concurrent BTC series, one multi-symbol rule (BTC/USDT's bar reads
#: BTC/USDC's, in another partition), and 1m/5m rules on every pair. Cooldowns and resolves are state that must
#: survive a killed engine.
RULES = """\
rules:
  - {name: s1_ema_up, exchange: binance, symbols: [BTC/USDT, BTC/USDC], timeframe: 1s,
     frequency: once_per_bar_close, condition: {left: {ema: 9}, op: crosses_up, right: {ema: 21}}}
  - {name: s1_ema_down, exchange: binance, symbols: [BTC/USDT], timeframe: 1s,
     frequency: once_per_bar_close, condition: {left: {ema: 9}, op: crosses_down, right: {ema: 21}}}
  - {name: s1_rsi_hot, exchange: binance, symbols: [BTC/USDT, BTC/USDC], timeframe: 1s,
     frequency: once_per_bar_close, notify_on_resolve: true, condition: {left: {rsi: 7}, op: above, right: 75}}
  - {name: s1_bb_break, exchange: binance, symbols: [BTC/USDC], timeframe: 1s, frequency: once_per_bar_close,
     cooldown: 15s, condition: {left: close, op: crosses_up, right: {bbands: {period: 20, k: 2, output: upper}}}}
  - {name: s1_pair_confirm, exchange: binance, symbols: [BTC/USDT], timeframe: 1s, frequency: once_per_bar_close,
     condition: {all: [{left: {ema: 5}, op: crossing, right: {ema: 13}},
                       {left: close, op: above, right: {sma: 30}, symbol: BTC/USDC}]}}
  - {name: s1_volume, exchange: binance, symbols: [BTC/USDT], timeframe: 1s,
     frequency: once_per_bar_close, cooldown: 10s, condition: {op: volume_spike, factor: 5, period: 30}}
  - {name: m1_close_ema, symbols: "*", timeframe: 1m, frequency: once_per_bar_close,
     condition: {left: close, op: crossing, right: {ema: 5}}}
  - {name: m1_volume, symbols: "*", timeframe: 1m, frequency: once_per_bar_close,
     condition: {op: volume_spike, factor: 3, period: 10}}
  - {name: m5_rsi, symbols: "*", timeframe: 5m, frequency: once_per_bar_close, notify_on_resolve: true,
     condition: {left: {rsi: 7}, op: above, right: 60}}
"""

#: (exchange, symbol, timeframe) the rules name explicitly: the feeds start once the engines subscribe to them.
EXPLICIT_SERIES = [("binance", "BTC/USDT", "1s"), ("binance", "BTC/USDC", "1s")]
BUILDER_TIMEFRAMES = ["1m", "5m", "15m", "1h"]  # candle_builder's defaults (not set in the settings)


def live_timeframes(pair: Pair) -> list[str]:
    """The timeframes the pipeline builds for ``pair``: the builder's, and those the rules name for it."""
    return BUILDER_TIMEFRAMES + [tf for ex, sym, tf in EXPLICIT_SERIES if (ex, sym) == (pair.exchange, pair.symbol)]


def pipeline_sections(rules: Path) -> dict:
    """candle_builder and alert_engine: the same for the run and its reference backtest."""
    return {"candle_builder": {"history_bars": 0},  # recordings: no exchange history (the backtest has none)
            "alert_engine": {"rules_file": str(rules), "clock": "exchange"}}  # cooldowns in the recording's time


def settings_file(path: Path, *, redis_url: str, cluster: bool, rules: Path, jsonl: Path, hook_url: str,
                  extra: dict | None = None) -> Path:
    """The one settings file of every process (what differs per process goes in its environment)."""
    doc = {
        "redis_url": redis_url,
        "redis_cluster": cluster,
        "log_level": "INFO",
        "market_feed": {"mode": "replay", "backoff_base_s": 0.1, "backoff_cap_s": 1.0, "silence_timeout_s": 2.0},
        **pipeline_sections(rules),
        "notifier": notifier_section(jsonl, hook_url),
    }
    for section, values in (extra or {}).items():
        if isinstance(values, dict):
            doc.setdefault(section, {}).update(values)
        else:
            doc[section] = values
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def backtest_settings(path: Path, rules: Path) -> Path:
    path.write_text(yaml.safe_dump({"log_level": "WARNING", **pipeline_sections(rules)}, sort_keys=False))
    return path
