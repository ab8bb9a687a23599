"""Every Redis key, stream, consumer group and pub/sub channel name sentinel uses. No key is built anywhere else.

Streams (durable)::

    sentinel:{p<n>}:trades                           TradeBatch / GapMarker / Watermark of the pairs of partition n,
                                                     written by market_feed (``part_trades``; docs/scale-out.md)
    sentinel:{p<n>}:tickers                          Ticker (``part_tickers``)
    sentinel:{p<n>}:candles                          closed (and revised) candles of every series of partition n,
                                                     written by candle_builder (``part_candles``)
    sentinel:{p<n>}:candles:{exchange}:{symbol}:{tf} the same candles of one series, same entry ids
                                                     (``series_candles``; ``shared.candle_series`` names them)
    sentinel:{p<n>}:live                             in-progress candles of partition n, throttled (``part_live``)
    sentinel:alerts                                  Alert, written by alert_engine, read by notifier
    sentinel:alerts:history                          every Alert, with retention, for the API
    sentinel:deadletter                              what could not be decoded or kept failing

Pub/sub channels mirror the streams for live views (see docs/channels.md).
"""

from __future__ import annotations

PREFIX = "sentinel"

#: The one field of every bus entry (``shared.bus``): msgpack bytes.
FIELD = b"d"

# ---- streams -------------------------------------------------------------------------------------------------------


# Unused since issue 21 (alert_engine writes part_alerts(p) and the part_* records): kept for old data and tools.
ALERTS = f"{PREFIX}:alerts"
ALERT_HISTORY = f"{PREFIX}:alerts:history"
DEAD_LETTER = f"{PREFIX}:deadletter"
NOTIFY_DEAD_LETTER = f"{PREFIX}:notify:deadletter"

# Set of "exchange|symbol" that market_feed publishes trades for; consumers discover streams from it.
FEED_REGISTRY = f"{PREFIX}:registry:feeds"
# Set of "exchange|symbol|book" and "exchange|symbol|derivs" that market_feed publishes order books / futures data for
# (to ``part_books`` / ``part_derivs``): the engine resolves book and futures rules' symbols against it.
BOOK_REGISTRY = f"{PREFIX}:registry:books"
# (the series candle_builder publishes candles for: one set per partition, ``part_candle_registry``)

REGISTRY_SEP = "|"


def history_reply(request_id: str) -> str:
    """List the reply to one history request is pushed to (consumer BLPOPs it)."""
    return f"{PREFIX}:history:reply:{request_id}"


def registry_member(*parts: str) -> str:
    return REGISTRY_SEP.join(parts)


def split_registry_member(member: str | bytes) -> list[str]:
    if isinstance(member, bytes):
        member = member.decode()
    return member.split(REGISTRY_SEP)


# ---- consumer groups -----------------------------------------------------------------------------------------------

GROUP_CANDLE_BUILDER = "candle_builder"
GROUP_ALERT_ENGINE = "alert_engine"
GROUP_NOTIFIER = "notifier"

# ---- keys ----------------------------------------------------------------------------------------------------------


def alert_cooldown(fingerprint: str) -> str:
    """String with a TTL: set NX while a rule is cooling down for this fingerprint."""
    return f"{PREFIX}:cooldown:{fingerprint}"


def alert_fired(alert_id: str) -> str:
    """String: set NX when an alert id is first published (replay safety)."""
    return f"{PREFIX}:alert:fired:{alert_id}"


RULE_STATE = f"{PREFIX}:rules:state"  # Hash fingerprint -> msgpack state (last fired, firing/resolved)
RULES = f"{PREFIX}:rules"  # Hash rule name -> YAML of the rule (rules managed by the API)


def notify_sent(alert_id: str, target: str) -> str:
    """String: idempotency record of one (alert, notification target) delivery."""
    return f"{PREFIX}:notify:sent:{alert_id}:{target}"


def notify_group(first_alert_id: str, target: str) -> str:
    """String: the alert ids (space-separated) of the group a notifier sends to ``target`` starting with
    ``first_alert_id``, written before the send: after a crash the group re-forms with the same alerts (and the same
    Idempotency-Key) even if more alerts have come."""
    return f"{PREFIX}:notify:group:{first_alert_id}:{target}"


def heartbeat(service: str) -> str:
    """Hash: a service's heartbeat (ts) and its status fields."""
    return f"{PREFIX}:heartbeat:{service}"


# ---- pub/sub channels ----------------------------------------------------------------------------------------------


def channel_candles(exchange: str, symbol: str, timeframe: str) -> str:
    return f"{PREFIX}:ch:candles:{exchange}:{symbol}:{timeframe}"


def channel_candles_live(exchange: str, symbol: str, timeframe: str) -> str:
    return f"{PREFIX}:ch:candles_live:{exchange}:{symbol}:{timeframe}"


def channel_tickers(exchange: str, symbol: str) -> str:
    return f"{PREFIX}:ch:tickers:{exchange}:{symbol}"


def channel_trades(exchange: str, symbol: str) -> str:
    """Raw trades for GUIs, relayed by the API from the partition's trades stream while someone listens, throttled."""
    return f"{PREFIX}:ch:trades:{exchange}:{symbol}"


CHANNEL_TRADES_PATTERN = f"{PREFIX}:ch:trades:*"

CHANNEL_ALERTS = f"{PREFIX}:ch:alerts"

# ---- notifier (append-only additions) ------------------------------------------------------------------------------

#: Stream of recent notification outcomes (capped), read by the API and ``sentinel notify``.
NOTIFY_DELIVERIES = f"{PREFIX}:notify:deliveries"

# ---- api (append-only additions) -----------------------------------------------------------------------------------

#: Channel the API PUBLISHes a rule name on after changing ``RULES`` (payload: the name; "*" = many changed).
CHANNEL_RULES = f"{PREFIX}:ch:rules"

# ---- candle_builder (append-only additions) ------------------------------------------------------------------------

# (the oldest history candle of each series: one hash per partition, ``part_candle_history_from``)

#: Consumer group of market_feed on history_requests(exchange) (it serves OHLCV history from the exchanges it is connected to).
GROUP_MARKET_FEED = "market_feed"

# ---- alert_engine (append-only additions) --------------------------------------------------------------------------

#: Hash rule name -> YAML of the rule as written in the engine's rules FILE; replaced (DEL + HSET in MULTI) on every
#: successful load, read by the API to list file rules next to the API-managed ``RULES``.
FILE_RULES = f"{PREFIX}:rules:file"


def alert_open(fingerprint: str) -> str:
    """String (TTL: the alert ids'): set while a rule's series has a firing alert published and not yet resolved. A
    resolved alert is published only while it is set, so "resolved" always follows a published "firing"."""
    return f"{PREFIX}:alert:open:{fingerprint}"


# ---- order books and derivatives (append-only additions; issue 24) -------------------------------------------------


# (the streams are per partition: ``part_books`` and ``part_derivs`` below; live views read these channels)


def channel_books(exchange: str, symbol: str) -> str:
    """Pub/sub channel mirroring one pair's entries of ``part_books`` for live views."""
    return f"{PREFIX}:ch:books:{exchange}:{symbol}"


# ---- subscriptions owned by live instances (shared.subscriptions) --------------------------------------------------


def subscriber(instance: str) -> str:
    """Hash "exchange|symbol|timeframe" -> look-back (closed candles wanted before the first live one) of ONE live
    subscriber instance, and the Redis time until which it is live, which the instance's heartbeat moves on; readers
    delete it once stale (``shared.subscriptions``), so a killed subscriber's series go away by themselves."""
    return f"{PREFIX}:{{subs}}:subscriber:{instance}"


#: Set of subscriber instance names whose ``subscriber(instance)`` hash may exist (an index, pruned by readers).
SUBSCRIBERS = f"{PREFIX}:{{subs}}:subscribers"

# ---- partitions (shared.partitions, shared.ownership) ---------------------------------------------------------------
# Every key of one partition carries its hash tag ``{p<n>}``: one Redis Cluster slot per partition.


def _part(partition: int) -> str:
    return f"{PREFIX}:{{p{partition}}}"


def members(group: str) -> str:
    """Sorted set: replica name -> last seen (ms) of the replicas of ``group`` sharing its partitions."""
    return f"{PREFIX}:members:{group}"


def feed_symbols(group: str) -> str:
    """Hash: replica name -> ``<ms>|<symbols, comma-separated, sorted>`` of the market_feed replicas of feed group
    ``group`` (``services.market_feed.publisher.check_symbol_list``: every live replica must feed the same list)."""
    return f"{PREFIX}:feed_symbols:{group}"


def lease(group: str, partition: int) -> str:
    """String with a TTL: ``<instance>|<fencing token>`` of the replica of ``group`` that owns ``partition``."""
    return f"{_part(partition)}:lease:{group}"


def fence(group: str, partition: int) -> str:
    """Counter: the fencing token of the last lease of ``partition`` taken by a replica of ``group``."""
    return f"{_part(partition)}:fence:{group}"


#: Hash of facts every service must agree on, recorded by the first one to start: ``partitions``.
META = f"{PREFIX}:meta"

#: String written just before a WAIT (``shared.durability``): the WAIT then covers every write acknowledged before it.
REPLICATION_MARK = f"{PREFIX}:replication:mark"


def part_trades(partition: int) -> str:
    """Stream: TradeBatch / GapMarker / Watermark of every pair of ``partition`` (market_feed -> candle_builder, and
    alert_engine for rules run on each trade). A Watermark whose symbol is "" speaks for every pair of its exchange
    in the partition."""
    return f"{_part(partition)}:trades"


def part_tickers(partition: int) -> str:
    """Stream: Ticker of every pair of ``partition`` (market_feed -> alert_engine)."""
    return f"{_part(partition)}:tickers"


def part_candles(partition: int) -> str:
    """Stream: closed candles and revisions of every pair and timeframe of ``partition`` (candle_builder ->
    alert_engine)."""
    return f"{_part(partition)}:candles"


def series_candles(partition: int, exchange: str, symbol: str, timeframe: str) -> str:
    """Stream: the closed candles of one series, with the same entry ids as in ``part_candles`` (history for the API,
    warm-up, and rules of other partitions that read this series); trimmed per timeframe."""
    return f"{_part(partition)}:candles:{exchange}:{symbol}:{timeframe}"


def part_live(partition: int) -> str:
    """Stream: in-progress candles (throttled) of ``partition`` (candle_builder -> alert_engine's intrabar rules)."""
    return f"{_part(partition)}:live"


def part_live_latest(partition: int) -> str:
    """Hash "exchange|symbol|timeframe" -> the latest in-progress candle of each series of ``partition`` (written with
    its ``part_live`` entry; the API reads a series' current candle here, whatever the partition's traffic)."""
    return f"{_part(partition)}:live:latest"


def part_books(partition: int) -> str:
    """Stream: throttled top-N book snapshots with metrics (BookSnapshot, carrying exchange and symbol) of every pair
    of ``partition`` (market_feed -> alert_engine's book rules); live views read ``channel_books``."""
    return f"{_part(partition)}:books"


def part_derivs(partition: int) -> str:
    """Stream: FundingRate, OpenInterest and Liquidation of every contract of ``partition`` (market_feed ->
    alert_engine's futures rules)."""
    return f"{_part(partition)}:derivs"


def channel_derivs(exchange: str, symbol: str) -> str:
    """Pub/sub channel mirroring a contract's entries of ``part_derivs`` for live views."""
    return f"{PREFIX}:ch:derivs:{exchange}:{symbol}"


def part_alerts(partition: int) -> str:
    """Stream: the alerts of the pairs of ``partition`` (alert_engine -> notifier group, API history)."""
    return f"{_part(partition)}:alerts"


def written(group: str, partition: int) -> str:
    """String: the id of the last fenced write (``Ownership.fenced``) of ``group``'s owner of ``partition``: a write
    retried after its connection failed, whose first attempt ran, is recognised and not run twice."""
    return f"{_part(partition)}:written:{group}"


def part_state(partition: int, group: str) -> str:
    """Hash: what the owner of ``partition`` in ``group`` needs to resume: offsets (the last entry id processed of
    each input stream) and per-pair state, written in the same fenced script as its outputs."""
    return f"{_part(partition)}:state:{group}"


def offset_field(stream: str) -> str:
    """The field of ``part_state`` holding the last entry id its owner processed of the input ``stream``."""
    return f"offset:{stream}"


def pair_field(exchange: str, symbol: str) -> str:
    """The field of ``part_state`` holding the owner's state of one pair."""
    return f"pair:{exchange}{REGISTRY_SEP}{symbol}"


def part_alert_fired(partition: int, alert_id: str) -> str:
    """String (TTL): set NX when an alert id is first published (replay safety)."""
    return f"{_part(partition)}:alert:fired:{alert_id}"


def part_alert_open(partition: int, fingerprint: str) -> str:
    """String (TTL): a rule's series has a published firing alert not yet resolved."""
    return f"{_part(partition)}:alert:open:{fingerprint}"


def part_alert_cooldown(partition: int, fingerprint: str) -> str:
    """String with a TTL: a rule is cooling down for this fingerprint."""
    return f"{_part(partition)}:cooldown:{fingerprint}"


def part_rule_state(partition: int) -> str:
    """Hash fingerprint -> msgpack rule status row (last fired, firing/resolved) of the series of ``partition``."""
    return f"{_part(partition)}:rules:state"


def part_candle_history_from(partition: int) -> str:
    """Hash "exchange|symbol|timeframe" -> bucket start (ms) of the oldest candle candle_builder published for a
    series of ``partition`` from history (written in the fenced commit that seeds or backfills it; a subscriber whose
    look-back grew can tell when the older candles are in the stream). Backfilled candles are appended after newer
    ones: order by ``ts``."""
    return f"{_part(partition)}:history_from"


def part_candle_registry(partition: int) -> str:
    """Set of "exchange|symbol|timeframe": the series of ``partition`` candle_builder publishes candles for (added in
    the fenced commit of a series' first candle; ``shared.candle_series`` reads every partition's)."""
    return f"{_part(partition)}:registry:candles"


def history_requests(exchange: str) -> str:
    """Stream of OHLCV history requests for one exchange: only market_feeds serving it read it."""
    return f"{PREFIX}:history:requests:{exchange}"


def replica_heartbeat(service: str, instance: str) -> str:
    """Hash with a TTL: one replica's heartbeat (ts, status fields, the partitions it owns)."""
    return f"{PREFIX}:heartbeat:{service}:{instance}"


GROUP_FEED_PREFIX = "market_feed:"


def feed_group(exchange: str) -> str:
    """The ownership group of the market_feeds serving ``exchange``."""
    return f"{GROUP_FEED_PREFIX}{exchange}"


def book_group(exchange: str) -> str:
    """The ownership group of the order books / futures data of ``exchange`` published by market_feeds that do not
    feed its trades (a derivatives venue, a books-only replica); a replica feeding the trades uses ``feed_group``."""
    return f"{GROUP_FEED_PREFIX}{exchange}|books"


def replicas(service: str) -> str:
    """Sorted set: instance -> last heartbeat (ms) of every replica of ``service`` seen lately (an index of the
    ``replica_heartbeat`` hashes, for /health; entries older than the hashes' TTL are dropped by the writers)."""
    return f"{PREFIX}:replicas:{service}"


#: Hash: per running process of a service (field ``service|host-pid``) its metrics figures and when it wrote them
#: (``shared.metrics.beat``); ``GET /status`` sums the live ones.
METRICS_FIGURES = f"{PREFIX}:metrics:figures"
