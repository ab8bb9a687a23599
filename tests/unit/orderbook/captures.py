"""Readers of the real recordings in ../shared/data used by the order-book tests (see ../shared/data/SOURCES.md)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from tests.conftest import shared_data

BINANCE_DIR = "binance_spot_btcusdt"


def cryptofeed_frames(name: str) -> Iterator[Any]:
    """Received frames of a cryptofeed capture (``<ts>: <raw>`` lines; the header and sent frames are skipped),
    decoded with JSON numbers as Decimal."""
    with gzip.open(shared_data(f"cryptofeed_sample_data/{name}"), "rt") as f:
        next(f)  # "<ws_url> <-> <connect_ts>"
        for line in f:
            if not line.strip() or " <- " in line.split(": ", 1)[0]:
                continue  # a frame sent by the client
            raw = line.split(": ", 1)[1]
            yield json.loads(raw, parse_float=Decimal)


def binance_capture(day: str) -> list[dict[str, Any]]:
    """The raw websocket capture of one file (``raw_ws_btcusdt_<day>.gz``): combined-stream frames
    (``{"stream", "data"}``) and the REST snapshot (``{"lastUpdateId", "bids", "asks"}``), in arrival order."""
    with gzip.open(shared_data(f"{BINANCE_DIR}/raw_ws_btcusdt_{day}.gz"), "rt") as f:
        return [json.loads(line.split(" ", 1)[1]) for line in f]
