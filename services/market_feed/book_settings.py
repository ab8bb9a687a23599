"""Settings of market_feed's order books and derivatives (``adapters/ccxt_book.py``, ``adapters/ccxt_derivs.py``).

Nested in market_feed's settings as lists (``market_feed.books``, ``market_feed.derivatives``: one entry per exchange;
``books.py`` runs them).
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _VenueFeed(BaseModel):
    """What every feed of one exchange has: the venue, its symbols, URL overrides, backoff, stream trimming."""

    model_config = ConfigDict(extra="forbid")

    exchange: str = Field(description="ccxt exchange id")
    name: str = Field(default="", description="the exchange name of what this entry publishes (streams, "
                                              "registries, partitions); default: exchange")
    symbols: list[str] = Field(min_length=1, description="unified symbols, e.g. BTC/USDT or BTC/USDT:USDT")
    ws_url: str | None = Field(default=None, description="websocket base override (mirror, proxy, local simulator)")
    rest_url: str | None = Field(default=None, description="REST base override")
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_cap_s: float = Field(default=30.0, gt=0)
    stream_maxlen: int = Field(default=10_000, ge=100, description="approximate MAXLEN of the streams written")

    @model_validator(mode="after")
    def _default_name(self) -> _VenueFeed:
        self.name = self.name or self.exchange
        return self


class BookFeedSettings(_VenueFeed):
    """Order books of the pairs of one exchange, published throttled as top-N snapshots with metrics.
    Binance spot: ``ws_url`` must contain ``/stream``; ``rest_url`` e.g. ``http://127.0.0.1:9443/api/v3``."""

    exchange: str = Field(default="binance", description="ccxt exchange id")
    publish_every_ms: int = Field(default=100, ge=10, le=60_000, description="throttle: at most one snapshot per "
                                                                             "pair per interval (100-250 typical)")
    top_n: int = Field(default=20, ge=1, le=1000, description="levels a side in each snapshot")
    bands_bps: list[Decimal] = Field(default_factory=lambda: [Decimal(10), Decimal(25), Decimal(50)],
                                     min_length=1, description="bands around the mid for depth/imbalance/walls")
    snapshot_limit: int = Field(default=1000, ge=5, le=5000, description="levels of the REST snapshot ccxt fetches")
    walls: bool = Field(default=True, description="wall events (needs the pair's trades: one more subscription)")
    wall_bps: Decimal = Field(default=Decimal(25), gt=0, lt=10_000)
    wall_min_ratio: Decimal = Field(default=Decimal(10), gt=0, description="wall = size >= this × median level")
    wall_min_size: Decimal = Field(default=Decimal(0), ge=0, description="and at least this size (base units)")
    wall_eaten_fraction: Decimal = Field(default=Decimal("0.5"), gt=0, le=1)
    watch_timeout_s: float = Field(default=30.0, gt=0, description="no book update this long: reconnect")

    @field_validator("bands_bps")
    @classmethod
    def _bands(cls, value: list[Decimal]) -> list[Decimal]:
        if any(not 0 < b < 10_000 for b in value):
            raise ValueError("every band must be in (0, 10000) bps")
        return sorted(value)


class DerivsFeedSettings(_VenueFeed):
    """Funding / mark / index, open interest and liquidations of perpetuals of one exchange. binanceusdm:
    ``ws_url`` = ``ws://HOST:PORT/ws`` (ccxt appends ``/market/ws/<n>``), ``rest_url`` = ``…/fapi/v1``."""

    exchange: str = Field(default="binanceusdm", description="ccxt exchange id of the derivatives venue")
    funding: bool = Field(default=True, description="mark/index/funding: watch_mark_price where ccxt has it, "
                                                    "else fetch_funding_rate every funding_every_s")
    funding_every_s: float = Field(default=10.0, gt=0)
    open_interest: bool = True
    open_interest_every_s: float = Field(default=10.0, gt=0, description="REST polling interval")
    liquidations: bool = Field(default=True, description="watch_liquidations where ccxt supports it")
    watch_timeout_s: float = Field(default=60.0, gt=0)
