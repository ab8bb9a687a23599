"""Derivatives messages (``streams.part_derivs``): a perpetual's funding (``FundingRate``), open interest
(``OpenInterest``) and forced orders (``Liquidation``), and ``decode_derivs`` for an entry holding any of them.
Append-only additions to schema version 1 (issue 24), encoded as every ``Message``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from shared.errors import DecodeError
from shared.schemas import Message, unpack


class FundingRate(Message):
    """A perpetual's mark and index price and funding (``streams.part_derivs``). ``funding_rate`` is the rate of the
    next funding (paid at ``next_funding_ts``, ms); ``basis_bps`` = (mark - index) / index * 10_000."""

    kind: Literal["funding"] = "funding"
    exchange: str
    symbol: str
    ts: int
    mark_price: Decimal
    index_price: Decimal | None = None
    funding_rate: Decimal | None = None
    next_funding_ts: int | None = None

    @property
    def basis_bps(self) -> Decimal | None:
        if not self.index_price:
            return None
        return (self.mark_price - self.index_price) * 10_000 / self.index_price


class OpenInterest(Message):
    """Open interest of a contract at exchange time ``ts`` (``streams.part_derivs``): ``amount`` in contracts
    (base units on Binance USD-M), ``value`` in quote units where the exchange gives it."""

    kind: Literal["open_interest"] = "open_interest"
    exchange: str
    symbol: str
    ts: int
    amount: Decimal
    value: Decimal | None = None


class Liquidation(Message):
    """A forced order (``streams.part_derivs``): ``side`` of the liquidation order itself (``sell`` = a long was
    liquidated), ``amount`` filled at average ``price``; ``order_price`` its limit (bankruptcy) price."""

    kind: Literal["liquidation"] = "liquidation"
    exchange: str
    symbol: str
    ts: int
    side: Literal["buy", "sell"]
    price: Decimal
    amount: Decimal
    order_price: Decimal | None = None


DerivsMessage = FundingRate | OpenInterest | Liquidation
_DERIVS: dict[str, type[FundingRate] | type[OpenInterest] | type[Liquidation]] = {
    "funding": FundingRate, "open_interest": OpenInterest, "liquidation": Liquidation}


def decode_derivs(raw: bytes) -> DerivsMessage:
    """An entry of ``streams.part_derivs`` (or its channel): funding, open interest or a liquidation, by its kind."""
    msg = unpack(raw)
    cls = _DERIVS.get(msg.get("k") if isinstance(msg, dict) else None)  # type: ignore[arg-type]
    if cls is None:
        kind = msg.get("k") if isinstance(msg, dict) else msg
        raise DecodeError(f"expected funding, open interest or a liquidation, got {kind!r}")
    return cls.from_msg(msg)
