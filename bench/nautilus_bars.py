"""NautilusTrader reference of bench_backtest.py (runs in bench/.venv-nautilus, not in sentinel's venv).

Loads Binance-layout trades CSVs (id,price,qty,quote_qty,time,is_buyer_maker[,is_best_match], no header) with pandas,
turns them into TradeTicks (TradeTickDataWrangler) and runs a BacktestEngine whose one actor subscribes to 1m, 5m,
15m and 1h LAST bars built internally from the trades. Prints one JSON line: trades, seconds (CSV loading included),
bars seen, version.
"""

from __future__ import annotations

import json
import sys
import time

import nautilus_trader
import pandas as pd
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig
from nautilus_trader.model.currencies import BTC, USDT
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import AccountType, OmsType
from nautilus_trader.model.identifiers import TraderId, Venue
from nautilus_trader.model.objects import Money
from nautilus_trader.persistence.wranglers import TradeTickDataWrangler
from nautilus_trader.test_kit.providers import TestInstrumentProvider
from nautilus_trader.trading.strategy import Strategy

STEPS = ("1-MINUTE", "5-MINUTE", "15-MINUTE", "1-HOUR")


class BarCounter(Strategy):
    def __init__(self, instrument_id: str) -> None:
        super().__init__()
        self.types = [BarType.from_str(f"{instrument_id}-{step}-LAST-INTERNAL") for step in STEPS]
        self.bars = 0

    def on_start(self) -> None:
        for bar_type in self.types:
            self.subscribe_bars(bar_type)

    def on_bar(self, bar: Bar) -> None:
        self.bars += 1


def main(paths: list[str]) -> None:
    start = time.perf_counter()
    instrument = TestInstrumentProvider.btcusdt_binance()
    engine = BacktestEngine(BacktestEngineConfig(trader_id=TraderId("BENCH-001"),
                                                 logging=LoggingConfig(log_level="ERROR")))
    engine.add_venue(venue=Venue("BINANCE"), oms_type=OmsType.NETTING, account_type=AccountType.CASH,
                     starting_balances=[Money(1_000_000, USDT), Money(100, BTC)])
    engine.add_instrument(instrument)
    wrangler = TradeTickDataWrangler(instrument)
    trades = 0
    for path in paths:
        df = pd.read_csv(path, header=None, names=["trade_id", "price", "quantity", "quote", "time", "buyer_maker",
                                                   "best"])
        df.index = pd.to_datetime(df["time"], unit="ms", utc=True)
        df.index.name = "timestamp"
        ticks = wrangler.process(df[["trade_id", "price", "quantity", "buyer_maker"]])
        engine.add_data(ticks)
        trades += len(ticks)
    counter = BarCounter(str(instrument.id))
    engine.add_strategy(counter)
    engine.run()
    seconds = time.perf_counter() - start
    engine.dispose()
    print(json.dumps({"trades": trades, "seconds": seconds, "bars": counter.bars,
                      "version": nautilus_trader.__version__}))


if __name__ == "__main__":
    main(sys.argv[1:])
