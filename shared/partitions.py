"""Which partition an (exchange, symbol) pair belongs to.

sentinel's work is split by pair into a fixed number of partitions (the ``partitions`` setting, the same for every
service: 16 unless set). A partition's streams and state share one Redis Cluster hash tag (``{p<n>}``), so every
transaction and script of a partition runs in one slot; replicas own whole partitions (``shared.ownership``).
The mapping is a CRC-32 of ``exchange|symbol``: stable across processes, Python versions and restarts.
"""

from __future__ import annotations

import zlib

DEFAULT_PARTITIONS = 16


def partition_of(exchange: str, symbol: str, partitions: int) -> int:
    """The partition of a pair, in ``range(partitions)``."""
    return zlib.crc32(f"{exchange}|{symbol}".encode()) % partitions


def tag(partition: int) -> str:
    """The hash tag shared by every key of a partition."""
    return f"{{p{partition}}}"
