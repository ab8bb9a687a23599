"""The whole-pipeline chaos harness (issue 19): the services as separate processes on real recordings, SIGKILLs of
every one of them and of redis-server, a Redis outage, malformed entries in every stream kind, dropped exchange
connections; then every candle against pandas, every alert against a clean backtest, every trade id counted.

Modules: ``layout`` (the only one that knows Redis names), ``sources`` (recordings, rules, the settings file),
``processes`` (start / SIGKILL / restart), ``scenario`` (the schedule and recovery times), ``inject`` (malformed
entries), ``progress`` (caught up?), ``verify`` (the comparisons), ``checks`` (the report's verdict, sabotage),
``run`` (one run, ``run_chaos``).
"""
