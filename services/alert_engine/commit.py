"""The commit of a batch: one atomic script call (``commit.lua``) per partition gates every fire (alert id seen before?
a resolve whose firing alert was never published? cooldown in exchange time?), publishes the others (the partition's
alerts stream, pub/sub), writes the rule state rows of the fingerprints the batch touched and, for a partition's
worker, checks its lease first (fencing: ``shared.ownership.LEASE_CHECK``, which also extends the lease, or takes
back one that expired untaken) and saves its new input offsets last. So replicas and restarts never
double-fire, "resolved" always follows a published "firing", and a kill -9 anywhere re-reads exactly what was not
committed (the alert ids make the replay publish nothing).

Placement (docs/scale-out.md): an alert, its exactly-once records (``part_alert_fired``, ``part_alert_open``,
``part_alert_cooldown``) and its rule's state row (``part_rule_state``) live in the partition of the series the rule
runs on, ``partition_of(alert.exchange, alert.symbol)``: each script touches one hash slot, on a Redis Cluster too. A
rule that also reads other series (multi-symbol) commits in the partition of the series it runs on, whatever the
others' partitions: its fingerprint, hence its cooldown and state, always land in the same partition, whose worker
is the one that evaluates it.

The rows are built before the answers are known, from the answer this engine predicts per fire (its own cooldown
knowledge); a fingerprint whose answer differs (a replay, another replica's cooldown) gets no row in the commit, and
its effects and row are redone with the real answer after it.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from typing import Any

import msgpack
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.alert_engine.core import AlertEngine, Fire
from services.alert_engine.core.firing import RuleStatus
from services.alert_engine.settings import Settings
from shared import metrics, streams
from shared.logs import LineBudget
from shared.ownership import Ownership, fenced_script
from shared.partitions import partition_of
from shared.resp import RespClient, Script
from shared.schemas import pack

logger = logging.getLogger(__name__)

_SCRIPT = resources.files(__package__).joinpath("commit.lua").read_text(encoding="utf-8")  # (without the fence)
Saved = dict[str, tuple[int | None, int | None]]  # fingerprint -> (cooldown until, last fired) before a commit


def _lua_pack(obj: Any) -> bytes:
    """msgpack for the script's cmsgpack, which knows no bin type: bytes and str both go as raw strings."""
    return msgpack.packb(obj, use_bin_type=False)


class AlertCommit:
    """Publishes the engine's fires (``publish``) and keeps the rule state rows the API shows."""

    def __init__(self, settings: Settings, redis: Redis, engine: AlertEngine) -> None:
        self.settings = settings
        self.redis = redis
        self.engine = engine
        # the commit is on the path of every alert: on one server reached by TCP or a Unix socket it goes through
        # the small client (``shared.resp``; ~4x less CPU per call than redis-py's asyncio client), else through a
        # connection of its own (redis-py's single-connection client; a Redis Cluster client routes each call to its
        # slot's node itself)
        self._small = RespClient.of(redis)  # (None for a Cluster, Sentinel or TLS client)
        self._conn: Any = redis if isinstance(redis, RedisCluster) or self._small is not None else redis.client()
        # a partition's worker: the lease checked first; tools and tests: no fence
        self._fenced = Script(redis, fenced_script(_SCRIPT), self._small)
        self._unfenced = Script(redis, _SCRIPT, self._small)
        # each partition's stream keeps its share of the history's retention
        self._maxlen = max(100, -(-settings.alert_history_maxlen // settings.partitions))
        self.cooldown_until: dict[str, int] = {}  # fingerprint -> as this engine knows it (-1: forever)
        self.last_alert: dict[str, str] = {}  # fingerprint -> id of its last alert this engine committed
        self._written: dict[str, tuple[Any, ...]] = {}  # fingerprint -> ``_row_key`` of the row last sent
        self.published = 0
        self.suppressed = 0
        self.duplicates = 0
        self.log_budget = LineBudget(logger, "alerts")  # (a whole market's bar boundary must not flood the log)

    def partition(self, exchange: str, symbol: str) -> int:
        """The partition an alert of (exchange, symbol) is committed in."""
        return partition_of(exchange, symbol, self.settings.partitions)

    async def publish(self, fires: list[Fire], *, owner: Ownership | None = None, partition: int | None = None,
                      offsets: dict[str, bytes] | None = None, rows: dict[str, bytes] | None = None) -> list[int]:
        """Gate and publish ``fires``, one script call per partition they belong to; returns the answers (1
        published, 0 duplicate id, -1 cooling down, -2 a resolve whose run published no firing alert).

        A partition's worker passes ``owner`` and ``partition`` (every fire is of that partition) and its new
        ``offsets`` (input stream -> last entry id read): one call, fenced by the lease, offsets saved with the
        alerts (even when there are none). FencedError when the lease is lost (the partition leaves ``owner``).
        Without ``owner`` (tools, tests): no fence, no offsets. ``rows`` (``changed_rows``, a partition's worker):
        rule state rows written with the call, beside those of the fingerprints ``fires`` touch."""
        predicted, saved, touched = self._apply_predicted(fires)
        rows = {**(rows or {}), **self._state_rows(touched)}
        by_partition: dict[int, list[int]] = {}
        if partition is not None:
            by_partition[partition] = []
        for i, f in enumerate(fires):
            p = self.partition(f.alert.exchange, f.alert.symbol)
            if partition is not None and p != partition:
                raise ValueError(f"alert {f.alert.id} of partition {p} committed in partition {partition}")
            by_partition.setdefault(p, []).append(i)
        answers = [0] * len(fires)
        s = self.settings
        if owner is not None and partition is not None:
            owner.check(partition)  # (FencedError before anything is sent if the partition is not held)
        flat_offsets: list[Any] = []
        for stream, offset in (offsets or {}).items():
            flat_offsets += (streams.offset_field(stream), offset)
        for p, indexes in by_partition.items():
            keys: list[Any] = [streams.part_alerts(p), streams.part_rule_state(p),
                               streams.part_state(p, streams.GROUP_ALERT_ENGINE)]
            fire_args: list[Any] = []
            part_rows: list[Any] = []
            for i in indexes:
                f, fp, state = fires[i], fires[i].fingerprint, fires[i].alert.state
                keys += (streams.part_alert_fired(p, f.alert.id), streams.part_alert_cooldown(p, fp),
                         streams.part_alert_open(p, fp))
                fire_args.append((f.alert.encode(), f.now_ms, f.cooldown_ms, fp,
                                  "*" if state == "resolved" else 1 if predicted[i] == 1 else 0, state))
                if fp in rows and touched[fp] is f:  # (the row of a fingerprint goes with its last fire)
                    part_rows += (fp, rows.pop(fp))
            if partition is not None:  # (a worker's other rows: every one of its partition)
                for fp, row in rows.items():
                    part_rows += (fp, row)
            args: list[Any] = [streams.CHANNEL_ALERTS, self._maxlen, s.fired_ttl_s * 1000, _lua_pack(fire_args),
                               _lua_pack(part_rows), _lua_pack(flat_offsets)]
            if owner is not None and partition is not None:
                replies = await owner.call_fenced(p, self._fenced, keys, args, client=self._conn)
            else:  # the check's keys and arguments are there, and ignored
                keys[:0] = [streams.lease(streams.GROUP_ALERT_ENGINE, p), streams.fence(streams.GROUP_ALERT_ENGINE, p)]
                replies = await self._unfenced(keys=keys, args=["", 0, 0, *args], client=self._conn)
            for i, answer in zip(indexes, replies, strict=True):
                answers[i] = int(answer)
        await s.durability.wait(self.redis)  # the records on redis_wait_replicas replicas, else not done (retried)
        await self._take_answers(fires, predicted, answers, saved, touched)
        return answers

    def cooling_down(self, fires: list[Fire]) -> bool:
        """Every fire is a firing alert whose fingerprint this engine itself published with a cooldown that still
        runs at the fire's time: the commit would answer -1 to each (the cooldown key is written only by a publish,
        and holds at least that end), so a partition's worker commits such a read as one that fired nothing. Their
        rule state rows go with a later commit (``changed_rows``); they count as suppressed."""
        for f in fires:
            until = self.cooldown_until.get(f.fingerprint)
            if f.alert.state != "firing" or not f.cooldown_ms or until is None or (0 <= until <= f.now_ms):
                return False
        self.suppressed += len(fires)
        return True

    def forget(self) -> None:
        """Drop what this engine knows of cooldowns (the engine was reset: Redis' records decide, as after a
        restart)."""
        self.cooldown_until.clear()

    async def close(self) -> None:
        """Give the commit's connections back (they are made again by the next commit)."""
        if self._small is not None:
            await self._small.aclose()
        if self._conn is not self.redis:
            await self._conn.aclose()

    def _apply_predicted(self, fires: list[Fire]) -> tuple[list[int], Saved, dict[str, Fire]]:
        """Each fire's answer as this engine predicts it (1 published, -1 cooling down), its effects applied; what
        they replaced per fingerprint (to undo a wrong prediction); the last fire per fingerprint."""
        predicted: list[int] = []
        saved: Saved = {}
        touched: dict[str, Fire] = {}
        status = self.engine.status
        for f in fires:
            fp = f.fingerprint
            until = self.cooldown_until.get(fp)
            if fp not in saved:
                st = status.get(fp)
                saved[fp] = (until, st.last_fired_ms if st is not None else None)
            p = -1 if f.cooldown_ms and until is not None and (until < 0 or f.now_ms < until) else 1
            predicted.append(p)
            if p == 1:
                self._apply_published(f)
            touched[fp] = f
        return predicted, saved, touched

    async def _take_answers(self, fires: list[Fire], predicted: list[int], answers: list[int], saved: Saved,
                            touched: dict[str, Fire]) -> None:
        """Count the answers; redo the effects of the fingerprints whose answer was predicted wrong, and write their
        rows (the commit left them out)."""
        wrong = {f.fingerprint for f, p, a in zip(fires, predicted, answers, strict=True)
                 if f.alert.state == "firing" and (a == 1) != (p == 1)}  # (a resolve's answer changes no row)
        if wrong:
            status = self.engine.status
            for fp in wrong:
                until, last_fired = saved[fp]
                if until is None:
                    self.cooldown_until.pop(fp, None)
                else:
                    self.cooldown_until[fp] = until
                if fp in status:
                    status[fp].last_fired_ms = last_fired
            for f, a in zip(fires, answers, strict=True):
                if a == 1 and f.fingerprint in wrong:
                    self._apply_published(f)
        for f, answer in zip(fires, answers, strict=True):
            if answer == 1:
                self.published += 1
                metrics.ALERTS_FIRED.labels(f.alert.rule, f.alert.severity, f.alert.state).inc()
                if self.log_budget.allow():
                    logger.info("alert %s %s %s %s: %s", f.alert.rule, f.alert.symbol, f.alert.timeframe,
                                f.alert.state, f.alert.message)
            elif answer == 0:
                self.duplicates += 1
            else:
                self.suppressed += 1
        if wrong:
            fixed = self._state_rows({fp: f for fp, f in touched.items() if fp in wrong})
            for fp, row in fixed.items():
                f = touched[fp]
                await self.redis.hset(streams.part_rule_state(self.partition(f.alert.exchange, f.alert.symbol)),
                                      fp, row)

    def _apply_published(self, f: Fire) -> None:
        if f.cooldown_ms:
            self.cooldown_until[f.fingerprint] = -1 if f.cooldown_ms < 0 else f.now_ms + f.cooldown_ms
        if f.alert.state == "firing":
            self.engine.status.mark_fired(f.fingerprint, f.now_ms)

    # ---- rule state rows (part_rule_state) --------------------------------------------------------------------------

    def changed_rows(self) -> dict[str, bytes]:
        """Packed rule state rows of the fingerprints whose state changed since their row was last sent (by a commit
        or here), cooldown as this engine knows it: no reads, and nothing for a status that did not change (on a
        whole market most rules run on timeframes that closed no bar since the last call)."""
        rows: dict[str, bytes] = {}
        written, now_ms = self._written, int(time.time() * 1000)
        for fp, st in self.engine.status.items():
            key = self._row_key(fp, st)
            if written.get(fp) != key:
                written[fp] = key
                rows[fp] = self._row(fp, st, now_ms)
        return rows

    def _state_rows(self, touched: dict[str, Fire]) -> dict[str, bytes]:
        """Packed rule state rows of the fingerprints a batch touched (cooldown as this engine knows it: no reads)."""
        rows: dict[str, bytes] = {}
        for fp, f in touched.items():
            st = self.engine.status.get(fp)
            if st is not None:
                self.last_alert[fp] = f.alert.id
                self._written[fp] = self._row_key(fp, st)
                rows[fp] = self._row(fp, st)
        return rows

    def _row_key(self, fp: str, st: RuleStatus) -> tuple[Any, ...]:
        """What a row shows that may change (``updated_at`` aside): equal keys, equal rows."""
        return st.state, st.since_ms, st.last_eval_ms, st.last_fired_ms, st.last_value, self.cooldown_until.get(fp)

    def _row(self, fp: str, st: RuleStatus, now_ms: int | None = None) -> bytes:
        """The packed row of one status (``RuleStatus.as_dict``, its cooldown as this engine knows it, when written,
        the id of its last alert committed here)."""
        until = self.cooldown_until.get(fp)
        rule = self.engine.routes.by_name.get(st.rule)
        row = st.as_dict()
        row["cooldown_until"] = until
        row["cooldown_ms"] = rule.cooldown_ms if rule else 0
        row["next_eligible"] = until if until is not None and until >= 0 else None
        row["updated_at"] = int(time.time() * 1000) if now_ms is None else now_ms
        row["last_alert_id"] = self.last_alert.get(fp)
        return pack(row)
