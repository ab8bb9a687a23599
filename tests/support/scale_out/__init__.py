"""The scale-out harness (issue 21, Evidence): N replicas of every service (market_feed replaying real recordings,
candle_builder, alert_engine, notifier, API) as separate processes on one Redis, a Redis Cluster (with or without
replica nodes) or a Sentinel-managed master; SIGKILLs of replicas (and optionally a Redis failover); then every closed
candle against pandas, the delivered alerts (webhook receiver honouring Idempotency-Key, JSONL file, the API's
history) against one clean one-process ``sentinel backtest`` of the same files and rules, and each API replica's
candles against pandas.

Modules: ``sources`` (recordings, rules, settings), ``progress`` (caught up? who holds which partition?),
``compare`` (what is compared, the totals, the verdict), ``run`` (one run: ``run_scale_out``), ``summary``.
The comparisons themselves are ``tests.support.chaos.verify``'s.
"""
