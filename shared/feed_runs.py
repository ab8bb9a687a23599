"""Decoding one read of a trades stream at once (``decode_feed_runs``): the entries of a read as ``decode_feed``
decodes them, with the one-trade entries of a pair after its first gathered into one ``TradeBatch``. For candle_builder, which reads
many streams of one-trade entries (a live feed's commonest entry) and handles each pair on its own.
"""

from __future__ import annotations

from typing import Any, cast

import msgpack

from shared.errors import DecodeError
from shared.feed_codec import decode_feed, decode_rows
from shared.schemas import FeedMessage, Trade, TradeBatch

_unpackb = msgpack.unpackb

#: What ``decode_feed_runs`` gives per item: (index of its first entry, index of its last entry, the message or the
#: DecodeError of that entry).
FeedRun = tuple[int, int, "FeedMessage | DecodeError"]


def _row_at(raw: bytes) -> int | None:
    """Where the only row of a one-trade entry written as rows (``t``: one row, the map's last key) starts in
    ``raw``, or None for any other entry. Everything before it (the map's header, ``v``, ``k``, ``x``, ``s`` and
    ``t``'s one-item array header) is the entry's *head*: an entry with the same head bytes is the same message up to
    that row (msgpack reads bytes in order, with no lookahead)."""
    reader = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=False)
    reader.feed(raw)
    try:
        keys = reader.read_map_header()
        for n in range(keys):
            key = reader.unpack()
            if n == keys - 1:
                return reader.tell() if key == "t" and reader.read_array_header() == 1 else None
            reader.skip()
    except Exception:  # (decode_feed decoded it: only an odd shape lands here)
        return None
    return None


def decode_feed_runs(raws: list[bytes]) -> list[FeedRun]:
    """``decode_feed`` of each entry of one read, with the one-trade entries of a pair after its first in ONE
    ``TradeBatch`` (in entry order; ``TradeColumns`` from 8 trades on): ``[(first, last, message or DecodeError),
    ...]``, where ``first`` and ``last`` are the indexes in ``raws`` of the first and last entry it holds. The messages of each pair come in
    entry order; messages of different pairs may come in another order than their entries (a batch is listed at its
    first entry), which is why only a reader that handles each pair on its own (candle_builder) takes this. Any other
    message (a gap, a watermark, a larger batch) ends every batch still being filled, so nothing moves across it.

    The same decoding and validation as ``decode_feed``: an entry whose bytes start with the *head* (``_row_at``) of a
    one-trade entry ``decode_feed`` decoded earlier in the read is the same map with another row, so only its row is
    unpacked; the rows of a batch are then checked together as ``decode_feed`` checks the rows of one entry
    (``decode_rows``: column-wise, each price and amount text seen before one dict lookup). A batch holding anything
    those checks refuse is decoded again entry by entry with ``decode_feed``, for each bad entry's own reason. This is
    a live feed's commonest entry (one trade per websocket frame): the map, its strings, a ``TradeBatch`` and a
    ``Trade`` per entry were ~60% of decoding it."""
    out: list[Any] = []  # FeedRun, or a batch being filled: [first, last, rows, entry indexes, (exchange, symbol)]
    heads: dict[bytes, list[Any] | None] = {}  # head -> its batch being filled, or None
    pairs: dict[bytes, tuple[str, str]] = {}  # head -> (exchange, symbol)
    sizes: list[int] = []  # the lengths of the heads seen
    n, i = len(raws), 0
    while i < n:
        raw = raws[i]
        head = b""
        for size in sizes:
            if raw[:size] in heads:
                head = raw[:size]
                break
        if head:  # this entry and the ones right after it with the same head
            size, batch = len(head), heads[head]
            if batch is None:
                batch = heads[head] = [i, i, [], [], pairs[head]]
                out.append(batch)
            add_row, add_index = batch[2].append, batch[3].append
            while True:
                try:
                    add_row(_unpackb(raw[size:], raw=False, strict_map_key=False, use_list=False))
                except Exception:  # (decode_feed says why)
                    add_row(None)
                add_index(i)
                i += 1
                if i == n:
                    break
                raw = raws[i]
                if not raw.startswith(head):
                    break
            batch[1] = i - 1
            continue
        try:
            msg = decode_feed(raw)
        except DecodeError as exc:
            out.append((i, i, exc))
            i += 1
            continue
        if type(msg) is TradeBatch and type(msg.trades) is list and len(msg.trades) == 1:
            # a new head: the entries after this one that share it are read the way above. This one stays as
            # decode_feed gave it (a whole market's read holds most pairs once: reading it again would double that)
            at = _row_at(raw) if i + 1 < n else None  # (the read's last entry: nothing after it could share it)
            if at is not None:
                heads[raw[:at]] = None
                pairs[raw[:at]] = (msg.exchange, msg.symbol)
                if at not in sizes:
                    sizes.append(at)
        else:
            for key in heads:  # nothing moves across this message
                heads[key] = None
        out.append((i, i, msg))
        i += 1
    runs: list[FeedRun] = []
    for item in out:
        if type(item) is tuple:
            runs.append(item)
        else:
            runs += _batch_runs(raws, *item)
    return runs


def _batch_runs(raws: list[bytes], first: int, last: int, rows: list[Any], indexes: list[int],
                pair: tuple[str, str]) -> list[FeedRun]:
    """The one-trade entries ``indexes`` of a pair as one batch (their ``rows``, checked as one entry's rows), or, when
    something in them is refused, each decoded by ``decode_feed``: the good ones in one batch, each bad one with its
    DecodeError."""
    try:
        return [(first, last, TradeBatch(*pair, decode_rows(rows)))]
    except DecodeError:
        pass
    out: list[FeedRun] = []
    good: list[Trade] = []
    where: list[int] = []
    for i in indexes:
        try:
            good.append(cast(list[Trade], cast(TradeBatch, decode_feed(raws[i])).trades)[0])
            where.append(i)
        except DecodeError as exc:
            out.append((i, i, exc))
    if good:
        out.insert(0, (where[0], where[-1], TradeBatch(*pair, good)))
    return out
