"""The alert rule language, shared by the alert engine (which runs it), the API (which validates rules with it) and
the CLI (``sentinel rules check``): pydantic models loaded from YAML, refused whole with every problem located.

A rules file::

    rules:
      - name: btc_breakout
        exchange: sim                     # optional: any exchange
        symbols: ["BTC/USDT"]             # a list, or a glob pattern such as "*/USDT"
        timeframe: 1m
        condition:                        # left OP right; operands are numbers, candle fields or indicators
          left: close
          op: crosses_up
          right: {ema: 21}
        frequency: once_per_bar_close     # once | once_per_bar | once_per_bar_close | every_time
        cooldown: 5m
        message: "{symbol} {close} crossed EMA21 {value}"
        severity: warning
        labels: {team: desk}
        channels: [console]

Operands: a number; a field name (``open high low close price volume buy_volume sell_volume quote_volume delta
trades vwap`` of the candle, ``bid ask mid spread spread_bps last`` of the latest ticker); or a one-key mapping naming
an indicator with its parameters — ``{sma: 20}``, ``{ema: {period: 9, source: high}}``, ``{rsi: 14}``,
``{macd: {fast: 12, slow: 26, signal: 9, output: histogram}}``, ``{bbands: {period: 20, k: 2, output: upper}}``,
``{atr: 14}``, ``{vwap: {anchor: 1d}}``, ``{volume_sma: 20}``, ``{cvd: {bars: 20}}`` / ``{cvd: {anchor: 1d}}``.
Order-book and futures operands (a rule using one is evaluated on each book / futures update of its pair, not on
candles): ``microprice book_mid book_spread book_spread_bps funding_rate basis_bps mark_price index_price
open_interest``, ``{depth_bid: {bps: 25, unit: quote}}``, ``{depth_ask: 25}``, ``{imbalance: 10}``,
``{wall_ratio_bid: 25}``, ``{wall_ratio_ask: 25}``, ``{wall_appeared: bid}``, ``{wall_pulled: ask}``,
``{wall_eaten: any}``, ``{open_interest_change: {window: 1h, unit: percent}}``,
``{liquidations: {window: 5m, side: sell, measure: count}}`` (docs/rules.md defines each).

Conditions: ``left`` with ``op`` one of ``greater_than``/``above``, ``less_than``/``below``, ``crossing``,
``crosses_up``, ``crosses_down`` and ``right``; ``op`` ``entering_channel``/``exiting_channel``/``inside_channel``/
``outside_channel`` with ``lower`` and ``upper``; ``op`` ``moving_up``/``moving_down`` (by ``amount``) or
``moving_up_pct``/``moving_down_pct`` (by ``percent``) within ``bars`` (or a time ``window`` such as 5m);
``op: volume_spike`` with ``factor`` and ``period``; and ``all: [...]`` / ``any: [...]`` of conditions. A condition
may name its own ``timeframe`` and ``symbol`` (multi-timeframe / multi-symbol combinations): it then reads that
series' latest candle closed by the time of the evaluation (never a later one).
"""

from __future__ import annotations

from shared.rules.check import check_rules
from shared.rules.conditions import (
    CHANNEL_OPS,
    COMPARE_OPS,
    MOVE_OPS,
    OP_ALIASES,
    All,
    AnyOf,
    Channel,
    Compare,
    Condition,
    Moving,
    VolumeSpike,
    Where,
    describe,
)
from shared.rules.loading import check_rules_file, dump_rule, load_rules_file, parse_rule_text, parse_rules
from shared.rules.model import PLACEHOLDERS, Frequency, Rule, RuleSet
from shared.rules.operands import (
    ATR,
    CANDLE_FIELDS,
    CVD,
    EMA,
    INDICATORS,
    MACD,
    RSI,
    SMA,
    TICKER_FIELDS,
    BOOK_FIELDS,
    DERIVS_FIELDS,
    FEEDS,
    VWAP,
    BBands,
    DepthAsk,
    DepthBid,
    FeedSpec,
    Imbalance,
    IndicatorSpec,
    Liquidations,
    MappingOperand,
    OpenInterestChange,
    WallEventSpec,
    WallRatioAsk,
    WallRatioBid,
    feed_kind,
    Operand,
    Symbol,
    VolumeSMA,
    is_pattern,
    operand_label,
    parse_duration_ms,
)

__all__ = [
    "ATR", "BOOK_FIELDS", "CANDLE_FIELDS", "DERIVS_FIELDS", "FEEDS", "DepthAsk", "DepthBid", "FeedSpec", "Imbalance",
    "Liquidations", "MappingOperand", "OpenInterestChange", "WallEventSpec", "WallRatioAsk", "WallRatioBid",
    "feed_kind", "CHANNEL_OPS", "COMPARE_OPS", "CVD", "EMA", "INDICATORS", "MACD", "MOVE_OPS", "OP_ALIASES",
    "PLACEHOLDERS", "RSI", "SMA", "TICKER_FIELDS", "VWAP", "All", "AnyOf", "BBands", "Channel", "Compare", "Condition",
    "Frequency", "IndicatorSpec", "Moving", "Operand", "Rule", "RuleSet", "Symbol", "VolumeSMA", "VolumeSpike", "Where",
    "check_rules", "check_rules_file", "describe", "dump_rule", "is_pattern", "load_rules_file", "operand_label",
    "parse_duration_ms", "parse_rule_text", "parse_rules",
]
