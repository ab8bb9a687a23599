"""The cause of an exchange that cannot be reached, told in words (issue 23: "no cause" was the complaint).

DNS failures cannot be produced here without sending a query off the machine, so this builds the exception chain
ccxt 4.5 raises (``ExchangeNotAvailable('binance GET <url>')`` from aiohttp's connector error from the OSError);
refused connections and timeouts are produced for real in tests/integration/test_market_feed_live.py."""

from __future__ import annotations

import asyncio
import socket

import ccxt

from services.market_feed.adapters.ccxt_exchange import describe_network_error

URL = "binance GET https://api.binance.com/api/v3/exchangeInfo"


def _chained(outer: Exception, *inner: BaseException) -> Exception:
    try:
        try:
            raise inner[0]
        except BaseException as exc:
            raise outer from exc
    except Exception as exc:
        return exc


def test_dns_failure_is_named_with_the_request():
    exc = _chained(ccxt.ExchangeNotAvailable(URL), socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert describe_network_error(exc) == f"DNS lookup failed (Name or service not known) — {URL}"


def test_refused_timeout_and_unknown_causes():
    refused = _chained(ccxt.ExchangeNotAvailable(URL), ConnectionRefusedError(111, "Connect call failed"))
    assert describe_network_error(refused) == f"connection refused — {URL}"
    timeout = _chained(ccxt.RequestTimeout(URL), asyncio.TimeoutError())
    assert describe_network_error(timeout) == f"timed out — {URL}"
    unreachable = _chained(ccxt.ExchangeNotAvailable(URL), OSError(101, "Network is unreachable"))
    assert describe_network_error(unreachable) == f"Network is unreachable — {URL}"
    assert describe_network_error(ccxt.ExchangeNotAvailable(URL)) == f"ExchangeNotAvailable: {URL}"
