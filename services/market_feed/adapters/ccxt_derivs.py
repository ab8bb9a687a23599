"""Perpetual-futures data from ccxt.pro: funding / mark / index, open interest, liquidations, to the contract's
partition stream ``streams.part_derivs(p)`` (and its ``channel_derivs``).

Per contract, each independent of the others (an error in one never stops another):

- funding: ``watch_mark_price`` where ccxt has it (Binance USD-M: ``<sym>@markPrice@1s`` carries mark, index,
  funding rate and next funding time), else ``fetch_funding_rate`` every ``funding_every_s`` → FundingRate;
- open interest: ``fetch_open_interest`` every ``open_interest_every_s`` (Binance has no open-interest stream),
  published when it changed → OpenInterest;
- liquidations: ``watch_liquidations`` where ccxt supports it (Binance USD-M ``<sym>@forceOrder``) →
  Liquidation.

With an ``ownership`` (market_feed's leases, ``books.py``) every write is fenced: made only while this replica holds
the contract's partition (``ccxt_book.publish_fenced``); a lost lease stops the loop of that contract (its new owner
publishes it). Errors back off (capped, jittered). ccxt 4.5.90 has no ``watch_funding_rate`` for Binance: the mark-price stream is
where Binance pushes funding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import ccxt.pro as ccxtpro
from redis.asyncio import Redis

from services.market_feed.adapters.ccxt_book import cancel_tasks, publish_fenced, sleep_or_stop
from services.market_feed.adapters.ccxt_exchange import apply_url_overrides, load_markets
from services.market_feed.book_settings import DerivsFeedSettings
from services.market_feed.derivs_core import (funding_from_mark, funding_from_rate, liquidation_from,
                                              open_interest_from)
from services.market_feed.settings import ExchangeFeed
from shared import streams
from shared.bus import Bus, backoff_delay
from shared.derivs_messages import FundingRate, Liquidation, OpenInterest
from shared.errors import ConfigError, UnknownExchangeError
from shared.ownership import Ownership
from shared.partitions import partition_of

logger = logging.getLogger(__name__)

BINANCE_FUTURES = {"binanceusdm": "linear", "binancecoinm": "inverse"}
_REST_KEYS = {"binanceusdm": ("fapiPublic",), "binancecoinm": ("dapiPublic",)}

Message = FundingRate | OpenInterest | Liquidation


def make_derivs_exchange(settings: DerivsFeedSettings) -> Any:
    """A ccxt.pro instance for the derivatives venue, pointed at ``ws_url`` / ``rest_url`` when set.

    Binance futures: ``urls['api']['ws'][linear|inverse]`` = ``ws_url`` (it must end with ``/ws``: ccxt turns it
    into ``…/market/ws/<n>`` and ``…/public/ws/<n>``, and must not contain ``/stream``, which ccxt takes for spot),
    ``urls['api'][fapiPublic|dapiPublic]`` = ``rest_url`` (``…/fapi/v1``).
    """
    if settings.exchange not in ccxtpro.exchanges:
        raise UnknownExchangeError(f"derivatives.exchange: unknown ccxt exchange id {settings.exchange!r}")
    exchange = getattr(ccxtpro, settings.exchange)({"enableRateLimit": True, "options": {"fetchCurrencies": False}})
    kind = BINANCE_FUTURES.get(settings.exchange)
    if kind is None:
        apply_url_overrides(exchange, settings.ws_url, settings.rest_url)
        return exchange
    if settings.ws_url:
        if "/stream" in settings.ws_url or not settings.ws_url.endswith("/ws"):
            raise ConfigError(f"derivatives.ws_url — a Binance futures websocket base must end with '/ws' and not "
                              f"contain '/stream' (ccxt decides spot vs futures from it), got {settings.ws_url!r}")
        exchange.urls["api"]["ws"][kind] = settings.ws_url
    if settings.rest_url:
        for key in _REST_KEYS[settings.exchange]:
            exchange.urls["api"][key] = settings.rest_url
    return exchange


@dataclass
class DerivsHealth:
    messages: int = 0
    errors: int = 0
    fenced: int = 0  # writes refused: the partition's lease was lost (another replica owns the contract now)
    quiet: int = 0  # watches that timed out: normal for liquidations in a calm market


class DerivsFeed:
    """Funding, open interest and liquidations of ``settings.symbols``; ``await run(stop)``."""

    def __init__(self, settings: DerivsFeedSettings, redis: Redis, *, bus: Bus | None = None,
                 exchange: Any = None, partitions: int = 16, ownership: Ownership | None = None) -> None:
        """``partitions``: the common setting (a contract's messages go to its partition's stream); ``ownership``:
        the leases under which they are written (None: unfenced, a feed on its own)."""
        self.settings = settings
        self.partitions = partitions
        self.ownership = ownership
        self.bus = bus or Bus(redis)
        self.exchange = exchange
        self.health: dict[str, DerivsHealth] = {}
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}  # each contract's loops, while ``run`` runs
        self._stop: asyncio.Event | None = None

    def health_fields(self) -> dict[str, Any]:
        """``exchange|symbol|<kind>.<counter>`` → value, for a heartbeat hash."""
        return {f"{self.settings.name}|{key}.{k}": v
                for key, h in self.health.items() for k, v in asdict(h).items()}

    async def start(self) -> None:
        if self.exchange is None:
            self.exchange = make_derivs_exchange(self.settings)
            try:
                await load_markets(self.exchange, ExchangeFeed(id=self.settings.exchange, name=self.settings.name,
                                                                    symbols=self.settings.symbols, tickers=False))
            except BaseException:
                await self.exchange.close()
                raise

    async def run(self, stop: asyncio.Event) -> None:
        if self.exchange is None:
            await self.start()
        self._stop = stop
        for symbol in self.settings.symbols:
            self._watch(stop, symbol)
        try:
            await stop.wait()
        finally:
            await cancel_tasks([t for tasks in self._tasks.values() for t in tasks])
            self._tasks.clear()
            with contextlib.suppress(Exception):
                await self.exchange.close()

    def _watch(self, stop: asyncio.Event, symbol: str) -> None:
        """Start the funding / open interest / liquidation loops of one contract."""
        s, ex, has = self.settings, self.exchange, self.exchange.has
        jobs = []
        if s.funding and has.get("watchMarkPrice"):
            jobs.append(self._loop(stop, "funding", symbol, lambda: ex.watch_mark_price(symbol),
                                   lambda raw: [funding_from_mark(s.name, symbol, raw)], None))
        elif s.funding and has.get("fetchFundingRate"):
            jobs.append(self._loop(stop, "funding", symbol, lambda: ex.fetch_funding_rate(symbol),
                                   lambda raw: [funding_from_rate(s.name, symbol, raw)], s.funding_every_s))
        if s.open_interest and has.get("fetchOpenInterest"):
            jobs.append(self._loop(stop, "open_interest", symbol, lambda: ex.fetch_open_interest(symbol),
                                   lambda raw: [open_interest_from(s.name, symbol, raw)], s.open_interest_every_s))
        if s.liquidations and has.get("watchLiquidations"):
            jobs.append(self._loop(stop, "liquidations", symbol, lambda: ex.watch_liquidations(symbol),
                                   lambda raw: [liquidation_from(s.name, symbol, r) for r in raw], None))
        self._tasks[symbol] = [asyncio.ensure_future(job) for job in jobs]

    async def retarget(self, symbols: list[str]) -> None:
        """Publish the contracts ``symbols`` from now on (while ``run`` runs): the loops of those dropped stop (their
        mark price stream unsubscribed where ccxt can), those added start, the others go on untouched."""
        for symbol in [sym for sym in self._tasks if sym not in symbols]:
            await cancel_tasks(self._tasks.pop(symbol))
            for key in [k for k in self.health if k.startswith(f"{symbol}|")]:
                del self.health[key]
            if self.exchange.has.get("unWatchMarkPrice"):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.exchange.un_watch_mark_price(symbol), 5)
        for symbol in symbols:
            if symbol not in self._tasks and self._stop is not None:
                self._watch(self._stop, symbol)

    async def _loop(self, stop: asyncio.Event, kind: str, symbol: str, call: Callable[[], Awaitable[Any]],
                    convert: Callable[[Any], list[Message | None]], poll_every_s: float | None) -> None:
        """Call ``call`` (a watch, or a fetch every ``poll_every_s``), publish what ``convert`` makes of it."""
        health = self.health.setdefault(f"{symbol}|{kind}", DerivsHealth())
        ex = self.settings.name
        partition = partition_of(ex, symbol, self.partitions)
        stream = streams.part_derivs(partition)
        channel = streams.channel_derivs(ex, symbol)
        timeout = self.settings.watch_timeout_s if poll_every_s is None else max(poll_every_s, 10.0)
        last: Any = None
        attempt = 0
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(call(), timeout)
                messages = [m for m in convert(raw) if m is not None]
                if poll_every_s is not None:  # a poll repeats itself: publish what changed
                    messages = [m for m in messages if m != last]
                    last = messages[-1] if messages else last
                if messages and self.ownership is not None:
                    rows = [(symbol, stream, m.encode(), self.settings.stream_maxlen, channel) for m in messages]
                    if await publish_fenced(self.ownership, {partition: rows}):
                        health.fenced += len(messages)
                        logger.warning("%s %s %s: partition %d is another replica's now; stopping", ex, symbol,
                                       kind, partition)
                        return
                    health.messages += len(messages)
                elif messages:
                    async with self.bus.pipeline() as pipe:
                        for m in messages:
                            self.bus.add_to(pipe, stream, m.encode(), maxlen=self.settings.stream_maxlen,
                                            channel=channel)
                        await pipe.execute()
                    health.messages += len(messages)
                attempt = 0
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                health.quiet += 1  # ccxt pings the connection itself; a quiet stream is not an error
                continue
            except Exception as exc:
                attempt += 1
                health.errors += 1
                logger.warning("%s %s %s: %s: %s", self.settings.name, symbol, kind, type(exc).__name__, exc)
                await sleep_or_stop(stop, backoff_delay(attempt, base=self.settings.backoff_base_s,
                                                        cap=self.settings.backoff_cap_s))
                continue
            if poll_every_s is not None:
                await sleep_or_stop(stop, poll_every_s)
