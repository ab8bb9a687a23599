"""A scale-out report in a few lines a person reads."""

from __future__ import annotations


def summary_lines(r: dict) -> list[str]:
    s = r.get("seconds", {})
    lines = [f"scale_out ({'cluster' if r.get('cluster') else 'one Redis'}): {'OK' if r.get('ok') else 'FAILED'} in "
             f"{s.get('total')} s (start {s.get('start')} s, sources {s.get('sources')} s, settle {s.get('settle')} s)"]
    kills = ", ".join(f"{k} {n}" for k, n in sorted(r.get("kills", {}).items()))
    failovers = [e for e in r.get("events", []) if e.get("kind") == "redis_failover"]
    lines.append(f"SIGKILLs: {kills}; Redis failovers {len(failovers)}"
                 + "".join(f" ({e.get('took_s')} s: {e.get('what', '')})" for e in failovers))
    for kind, t in r.get("takeovers", {}).items():
        lines.append(f"  {kind:<14} taken over {t['measured'] - t['not_taken_over']}/{t['measured']} "
                     f"({t.get('all_by_another_replica', 0)} wholly by the other replica, the rest by the restarted "
                     f"victim)  median {t['median_s']} s  [{t['min_s']}-{t['max_s']}]")
    for name, crashes in r.get("crashes", {}).items():
        lines.append(f"  CRASHED {name}: {len(crashes)} exit(s), rc {[c['rc'] for c in crashes]}")
    if r.get("not_settled"):
        lines.append(f"  not settled: {r['not_settled'][:5]}")
    t = r.get("totals")
    if t:
        lines.append(f"trades: {t['trades_expected']:,} expected; missing {t['trades_missing']}, doubled "
                     f"{t['trades_doubled']}, unexpected {t['trades_unexpected']}, differing {t['trades_differing']}")
        lines.append(f"candles: {t['candles_compared']:,} of {t['candles_expected']:,} compared with pandas; missing "
                     f"{t['candles_missing']}, extra {t['candles_extra']}, doubled {t['candles_doubled']}, "
                     f"differing {t['candles_differing']}; API replicas: {t['api_candles_compared']:,} compared, "
                     f"{t['api_candles_wrong']} wrong, {t['api_errors']} errors")
        lines.append(f"alerts: {t['alerts_expected']} expected (backtest); missing {t['alerts_missing']}, extra "
                     f"{t['alerts_extra']}, duplicated {t['alerts_duplicated']}, differing {t['alerts_differing']} "
                     f"(worst sink; ids repeated on the wire, deduped by Idempotency-Key: "
                     f"{t['webhook_raw_repeated_ids']})")
        lines.append(f"notifier: {t['alerts_published']} published by the engines ({t['alerts_published_twice']} ids in "
                     f"two entries or more); not delivered "
                     f"{t['notifier_missing']}, never published {t['notifier_extra']}, twice "
                     f"{t['notifier_duplicated']}")
        bad = {k: v for k, v in r.get("candles", {}).items()
               if v["missing_count"] or v["extra_count"] or v["differing_count"] or v["doubled_count"]}
        for k, v in list(bad.items())[:8]:
            lines.append(f"  candles {k}: missing {v['missing_count']} extra {v['extra_count']} doubled "
                         f"{v['doubled_count']} differing {v['differing_count']} of {v['expected']}")
        for sink in ("webhook", "jsonl", "api0"):
            a = r.get("alerts", {}).get(sink)
            if a and (a["missing"] or a["extra"] or a["differing"] or a["duplicated"]):
                lines.append(f"  alerts at {sink}: missing {a['missing_ids'][:4]} extra {a['extra_ids'][:4]} "
                             f"differing {[d['id'] for d in a['differing_examples'][:4]]}")
    return lines
