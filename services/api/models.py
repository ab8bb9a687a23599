"""Response models of the API (their JSON schemas make the OpenAPI document). Decimals are strings in JSON."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas import Alert, Candle, Ticker

_CANDLE_EXAMPLE = {
    "kind": "candle", "exchange": "binance", "symbol": "BTC/USDT", "timeframe": "1m", "ts": 1723161240000,
    "open": "61837.63", "high": "61850.00", "low": "61820.01", "close": "61841.20", "volume": "12.5",
    "buy_volume": "7.25", "sell_volume": "5.25", "quote_volume": "773010.5", "trades": 412,
    "first_trade_id": 3735683000, "last_trade_id": 3735683411, "closed": True, "revision": 0, "incomplete": False,
}
_ALERT_EXAMPLE = {
    "kind": "alert", "id": "9f2c1e0a", "rule": "btc-above-62k", "exchange": "binance", "symbol": "BTC/USDT",
    "timeframe": "1m", "ts": 1723161240000, "fired_at": 1723161300000, "price": "62010.5", "value": "62010.5",
    "condition": "close above 62000", "message": "BTC/USDT closed above 62000", "severity": "warning",
    "labels": {}, "channels": ["console"], "state": "firing",
}


class ServiceHealth(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str = Field(examples=["ok"])
    age_s: float | None = Field(description="Seconds since the last heartbeat.", examples=[0.8])


class StreamHealth(BaseModel):
    model_config = ConfigDict(extra="allow")
    stream: str = Field(examples=["sentinel:alerts"])
    group: str = Field(examples=["notifier"])
    status: str = Field(examples=["ok"])
    pending: int | None = Field(default=None, description="Delivered but not yet acknowledged.")
    lag: int | None = Field(default=None, description="Entries not yet delivered to the group; null when not known "
                                                        "exactly (see lag_source, lag_at_least).")
    lag_source: str | None = Field(default=None, examples=["redis"], description=(
        "Where lag comes from: `redis` (XINFO GROUPS, Redis ≥ 7), `last-delivered-id` (the group read the last entry), "
        "`length` (the group is behind the first entry), `counted` (entries after last-delivered-id, counted in "
        "Redis up to the limit), or `unknown: …`."))
    lag_at_least: int | None = Field(default=None, description="Set when the lag was counted only this far.")
    length: int | None = None


class Health(BaseModel):
    status: str = Field(examples=["ok"], description="ok, or down with the reasons in problems.")
    redis: str = Field(examples=["ok"])
    services: dict[str, ServiceHealth]
    streams: list[StreamHealth]
    problems: list[str] = Field(examples=[["alert_engine: heartbeat is 31.2s old (limit 10s)"]])


class RuleStateOut(BaseModel):
    fingerprint: str
    rule: str = Field(examples=["btc-above-62k"])
    exchange: str | None = Field(examples=["binance"])
    symbol: str | None = Field(examples=["BTC/USDT"])
    timeframe: str | None = Field(examples=["1m"])
    state: str = Field(examples=["firing"], description="firing, resolved, or what the engine reports.")
    last_fired: int | None = Field(description="Exchange time (ms) the rule last fired.", examples=[1723161300000])
    last_alert_id: str | None
    cooldown_left_s: float = Field(examples=[42.5], description="Seconds of cooldown left (wall clock).")
    cooldown_forever: bool = Field(default=False, description="A `once` rule that fired: it never fires again.")
    next_eligible: int | None = Field(description="Exchange time (ms) the cooldown ends; null if not cooling down.")
    extra: dict[str, Any] = Field(default_factory=dict)


class AlertStatus(BaseModel):
    rules: list[RuleStateOut]


class AlertItem(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"cursor": "1723161300000-0-3", "alert": _ALERT_EXAMPLE}]})
    cursor: str = Field(description="Position of this alert (stream id and partition); pass it as `cursor` to get "
                        "the next page.")
    alert: Alert


class AlertHistory(BaseModel):
    items: list[AlertItem]
    next_cursor: str | None = Field(description="null when there is nothing older.")


class CandleSeries(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "exchange": "binance", "symbol": "BTC/USDT", "timeframe": "1m", "candles": [_CANDLE_EXAMPLE], "live": None}]})
    exchange: str
    symbol: str
    timeframe: str
    candles: list[Candle]
    live: Candle | None = Field(default=None, description="The in-progress candle, when asked for and newer.")


class TickerOut(BaseModel):
    ticker: Ticker | None


class CvdPoint(BaseModel):
    ts: int
    delta: Decimal = Field(description="Taker buy minus taker sell volume of the candle.")
    cvd: Decimal = Field(description="Cumulative delta since the first candle returned.")


class CvdSeries(BaseModel):
    exchange: str
    symbol: str
    timeframe: str
    points: list[CvdPoint]


class SeriesList(BaseModel):
    series: list[dict[str, str]] = Field(examples=[[{"exchange": "binance", "symbol": "BTC/USDT", "timeframe": "1m"}]])


class Problem(BaseModel):
    detail: Any
