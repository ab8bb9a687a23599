"""``GET /books/{exchange}/{symbol}``: a pair's latest order-book snapshot and the futures figures of its perpetuals.

The snapshots and futures readings live in their partition's streams (``streams.part_books`` / ``part_derivs``,
shared by the pairs of a partition): the latest entries are read back until the pair's are found (a bounded scan).
The perpetuals of a spot pair ``BASE/QUOTE`` are the ``BASE/QUOTE:SETTLE`` contracts ``streams.BOOK_REGISTRY``
lists with futures data, on any exchange. Live updates: ``/ws?books=exchange|symbol&derivs=exchange|symbol``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.params import Path as PathParam
from fastapi.responses import JSONResponse
from redis.asyncio import Redis

from shared import streams
from shared.book_messages import BookSnapshot
from shared.bus import FIELD
from shared.derivs_messages import FundingRate, Liquidation, OpenInterest
from shared.errors import DecodeError
from shared.partitions import partition_of
from shared.schemas import unpack

PAGE = 500
MAX_PAGES = 8  # entries read back at most: PAGE x MAX_PAGES per stream
LIQUIDATIONS = 20
DERIVS = {"funding": FundingRate, "open_interest": OpenInterest, "liquidation": Liquidation}


def mount(app: FastAPI, settings: Any, redis: Redis, access: Any) -> None:
    @app.get("/books/{exchange}/{symbol:path}", dependencies=[Depends(access.require("read"))], tags=["market"],
             responses={401: {"description": "missing or invalid bearer token"}})
    async def get_book(exchange: str, symbol: Annotated[str, PathParam(description="BTC-USDT or BTC%2FUSDT")]
                       ) -> JSONResponse:
        """The pair's latest book snapshot (top levels, mid, spread, microprice, bands, wall events; null when none)
        and, per perpetual of the pair, its latest funding / open interest reading and its last liquidations."""
        sym = symbol if "/" in symbol else symbol.replace("-", "/", 1)
        parts = settings.partitions
        found = await _latest(redis, streams.part_books(partition_of(exchange, sym, parts)), exchange, sym, {"book"})
        book = found.get("book")
        futures = []
        for ex, contract in await perpetuals(redis, sym):
            got = await _latest(redis, streams.part_derivs(partition_of(ex, contract, parts)), ex, contract,
                                {"funding", "open_interest"}, liquidations=LIQUIDATIONS)
            futures.append({"exchange": ex, "symbol": contract,
                            **{k: _json(DERIVS[k], got.get(k)) for k in ("funding", "open_interest")},
                            "liquidations": [_json(Liquidation, m) for m in got.get("liquidation", [])]})
        return JSONResponse({"exchange": exchange, "symbol": sym, "book": _json(BookSnapshot, book),
                             "futures": futures})


async def perpetuals(redis: Redis, symbol: str) -> list[tuple[str, str]]:
    """(exchange, contract) with futures data whose contract is ``symbol`` itself or ``symbol:SETTLE``."""
    out = []
    for member in await redis.smembers(streams.BOOK_REGISTRY):
        parts = streams.split_registry_member(member)
        if len(parts) == 3 and parts[2] == "derivs" and (parts[1] == symbol or parts[1].startswith(symbol + ":")):
            out.append((parts[0], parts[1]))
    return sorted(out)


async def _latest(redis: Redis, stream: str, exchange: str, symbol: str, kinds: set[str],
                  liquidations: int = 0) -> dict[str, Any]:
    """The newest message map of each of ``kinds`` for (exchange, symbol) in ``stream``, and up to ``liquidations``
    newest liquidations (list, newest first), reading back at most PAGE x MAX_PAGES entries."""
    out: dict[str, Any] = {}
    liqs: list[Any] = []
    top = "+"
    for _ in range(MAX_PAGES):
        entries = await redis.xrevrange(stream, max=top, min="-", count=PAGE)
        for entry_id, fields in entries:
            try:
                msg = unpack(fields[FIELD])
            except (DecodeError, KeyError):
                continue
            if not isinstance(msg, dict) or msg.get("exchange") != exchange or msg.get("symbol") != symbol:
                continue
            kind = msg.get("k")
            if kind == "liquidation" and len(liqs) < liquidations:
                liqs.append(msg)
            elif kind in kinds and kind not in out:
                out[kind] = msg
        if len(entries) < PAGE or (kinds <= out.keys() and len(liqs) >= liquidations):
            break
        last = entries[-1][0]
        top = f"({last.decode() if isinstance(last, bytes) else last}"
    if liqs:
        out["liquidation"] = liqs
    return out


def _json(cls: Any, msg: Any) -> Any:
    if msg is None:
        return None
    try:
        return cls.from_msg(msg).model_dump(mode="json")
    except DecodeError:
        return None
