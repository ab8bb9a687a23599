"""The local exchange speaking Kraken's protocol (websocket v2, REST ``/0/public``): a second, different protocol.

Websocket ``ws://HOST:PORT/v2``::

    → {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]}, "req_id": 1}
    ← {"method": "subscribe", "result": {"channel": "trade", "snapshot": false, "symbol": "BTC/USD"},
       "success": true, "time_in": "…", "time_out": "…", "req_id": 1}
    ← {"channel": "trade", "type": "update", "data": [{"symbol": "BTC/USD", "side": "sell", "price": 10749.4,
       "qty": 0.004, "ord_type": "market", "trade_id": 1, "timestamp": "2019-07-01T00:00:03.172000Z"}]}

REST: ``/0/public/Time``, ``AssetPairs``, ``Assets``, ``Trades?pair=XBTUSD&since=<s>&count=<n>``
(rows ``[price, volume, time_s, "b"|"s", "m", "", trade_id]``). Failure injection is the Binance server's.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.exchange_sim.rest import json_reply
from services.exchange_sim.server import ExchangeSim, _Conn
from shared.schemas import Trade

_ASSET = {"BTC": "XXBT", "ETH": "XETH", "USD": "ZUSD", "EUR": "ZEUR"}
_ALT = {"BTC": "XBT"}


def _pair_id(symbol: str) -> str:
    base, quote = symbol.split("/")
    return _ASSET.get(base, base) + _ASSET.get(quote, quote)


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


class KrakenSim(ExchangeSim):
    """Same market and failure injection as ExchangeSim, Kraken's wire format."""

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v2"

    def feed_config(self, exchange_id: str = "kraken") -> dict[str, Any]:
        return super().feed_config(exchange_id)

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/v2", self._ws)
        app.router.add_get("/0/public/Time", self._k_time)
        app.router.add_get("/0/public/AssetPairs", self._k_pairs)
        app.router.add_get("/0/public/Assets", self._k_assets)
        app.router.add_get("/0/public/Trades", self._k_trades)
        app.router.add_post("/_sim/{command}", self._control)

    async def _publish_trade(self, symbol: str, trade: Trade) -> None:
        await self._broadcast(f"trade:{symbol}", {"channel": "trade", "type": "update", "data": [{
            "symbol": symbol, "side": "buy" if trade.is_buy else "sell", "price": float(trade.price),
            "qty": float(trade.amount), "ord_type": "market", "trade_id": trade.id, "timestamp": _iso(trade.ts)}]},
            wrap=False)

    async def _send_tickers(self, ts: int) -> None:
        for symbol, book in self.books.items():
            last = book.last
            if last is None:
                continue
            await self._broadcast(f"ticker:{symbol}", {"channel": "ticker", "type": "update", "data": [{
                "symbol": symbol, "bid": float(last.price - book.tick), "bid_qty": 1.0,
                "ask": float(last.price + book.tick), "ask_qty": 1.0, "last": float(last.price),
                "volume": float(self._volume[symbol]), "vwap": float(last.price), "low": float(last.price),
                "high": float(last.price), "change": 0.0, "change_pct": 0.0}]}, wrap=False)

    def _command(self, conn: _Conn, text: str) -> dict[str, Any] | None:
        try:
            msg = json.loads(text)
            method, req_id = msg.get("method"), msg.get("req_id")
        except (ValueError, AttributeError):
            return {"error": "Invalid JSON", "success": False}
        if method == "ping":
            return {"method": "pong", "req_id": req_id, "time_in": _iso(int(time.time() * 1000)),
                    "time_out": _iso(int(time.time() * 1000))}
        if method not in ("subscribe", "unsubscribe"):
            return {"error": f"unknown method {method!r}", "method": method, "success": False, "req_id": req_id}
        params = msg.get("params") or {}
        channel = params.get("channel")
        symbols = params.get("symbol") or []
        now = _iso(int(time.time() * 1000))
        for symbol in symbols:
            if symbol not in self.books:
                return {"error": f"Currency pair not supported {symbol}", "method": method, "success": False,
                        "symbol": symbol, "req_id": req_id, "time_in": now, "time_out": now}
            key = f"{channel}:{symbol}"
            if method == "subscribe":
                conn.subs.add(key)
            else:
                conn.subs.discard(key)
        self._subscribed.set()
        return {"method": method, "result": {"channel": channel, "snapshot": False,
                                              "symbol": symbols[0] if symbols else None},
                "success": True, "time_in": now, "time_out": now, "req_id": req_id}

    # ---- REST ----------------------------------------------------------------------------------------------------

    async def _k_time(self, request: web.Request) -> web.Response:
        now = time.time()
        return json_reply({"error": [], "result": {"unixtime": int(now), "rfc1123": ""}})

    async def _k_pairs(self, request: web.Request) -> web.Response:
        result = {}
        for symbol, book in self.books.items():
            base, quote = symbol.split("/")
            pid = _pair_id(symbol)
            result[pid] = {
                "altname": _ALT.get(base, base) + _ALT.get(quote, quote), "wsname": symbol,
                "aclass_base": "currency", "base": _ASSET.get(base, base), "aclass_quote": "currency",
                "quote": _ASSET.get(quote, quote), "lot": "unit", "cost_decimals": 5,
                "pair_decimals": max(0, -book.tick.as_tuple().exponent),  # type: ignore[operator]
                "lot_decimals": max(0, -book.lot.as_tuple().exponent), "lot_multiplier": 1,  # type: ignore[operator]
                "leverage_buy": [], "leverage_sell": [], "fees": [[0, 0.26]], "fees_maker": [[0, 0.16]],
                "fee_volume_currency": "ZUSD", "margin_call": 80, "margin_stop": 40, "ordermin": "0.0001",
                "costmin": "0.5", "tick_size": str(book.tick), "status": "online"}
        return json_reply({"error": [], "result": result})

    async def _k_assets(self, request: web.Request) -> web.Response:
        result = {}
        for symbol in self.books:
            for code in symbol.split("/"):
                result[_ASSET.get(code, code)] = {"aclass": "currency", "altname": _ALT.get(code, code),
                                                  "decimals": 10, "display_decimals": 5, "status": "enabled"}
        return json_reply({"error": [], "result": result})

    async def _k_trades(self, request: web.Request) -> web.Response:
        pid = request.query.get("pair", "")
        symbol = next((s for s in self.books if pid in (_pair_id(s), s.replace("/", ""),
                                                         _ALT.get(s.split("/")[0], s.split("/")[0])
                                                         + s.split("/")[1])), None)
        if symbol is None:
            return json_reply({"error": ["EQuery:Unknown asset pair"]})
        book = self.books[symbol]
        count = min(int(request.query.get("count", "1000")), 1000)
        since = request.query.get("since")
        if since is None:
            rows = book.recent(count)
        else:
            value = int(since)
            since_ms = value // 1_000_000 if value > 10**14 else value * 1000  # ns or seconds, as Kraken accepts
            rows = book.agg_trades(from_id=None, start_time=since_ms, end_time=None, limit=count)
        out = [[str(t.price), str(t.amount), f"{t.ts / 1000:.4f}", "b" if t.is_buy else "s", "m", "", t.id]
               for t in rows]
        last = str(rows[-1].ts * 1_000_000) if rows else str(since or 0)
        return json_reply({"error": [], "result": {_pair_id(symbol): out, "last": last}})
