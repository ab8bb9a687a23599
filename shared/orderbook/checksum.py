"""The order-book checksums exchanges send, computed from a local book, to prove it equals theirs.

Both are CRC32 (zlib's) over a string built from the top levels, with prices and sizes written exactly as the
exchange wrote them: a ``Decimal`` parsed from the exchange's string keeps its exponent, and ``format(d, 'f')`` gives
the string back (``"0.000022900"`` stays as is; ``str()`` would switch to exponent notation for small numbers).
"""

from __future__ import annotations

import zlib
from decimal import Decimal

from shared.orderbook.book import L2Book


def _plain(value: Decimal) -> str:
    return format(value, "f")


def kraken_checksum(book: L2Book) -> int:
    """Kraken (websocket v1 ``book``, field ``c``): CRC32, unsigned, of the top 10 asks (lowest first) then the top 10
    bids (highest first), each level written as price then volume with the decimal point removed and leading zeros
    stripped, all concatenated (``"0.05005"`` → ``"5005"``, ``"1.00000000"`` → ``"100000000"``)."""
    parts: list[str] = []
    for level in book.asks.levels(10) + book.bids.levels(10):
        parts.append(_plain(level.price).replace(".", "").lstrip("0"))
        parts.append(_plain(level.size).replace(".", "").lstrip("0"))
    return zlib.crc32("".join(parts).encode())


def okx_checksum(book: L2Book) -> int:
    """OKX (``books`` channel, field ``checksum``): CRC32 as a signed 32-bit integer of the first 25 bids and asks
    interleaved, ``bid1price:bid1size:ask1price:ask1size:bid2price:...``; where one side is shorter, its missing
    levels are left out (not written empty)."""
    bids, asks = book.bids.levels(25), book.asks.levels(25)
    parts: list[str] = []
    for i in range(max(len(bids), len(asks))):
        if i < len(bids):
            parts += (_plain(bids[i].price), _plain(bids[i].size))
        if i < len(asks):
            parts += (_plain(asks[i].price), _plain(asks[i].size))
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc
