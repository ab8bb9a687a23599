"""A chaos report in a few lines a person reads."""

from __future__ import annotations


def summary_lines(r: dict) -> list[str]:
    t = r.get("totals", {})
    lines = [f"chaos_pipeline: {'OK' if r.get('ok') else 'FAILED'} in {r['seconds'].get('total')} s "
             f"(sources {r['seconds'].get('sources')} s, settle {r['seconds'].get('settle')} s)"]
    kills = ", ".join(f"{k} {n}" for k, n in sorted(r.get("kills", {}).items()))
    lines.append(f"SIGKILLs: {kills}; redis-server {r.get('redis_kills')}; outages {r.get('outages')} s; "
                 f"exchange drops {r.get('drops')}")
    for kind, rec in r.get("recoveries", {}).items():
        lines.append(f"  recovered {kind:<14} {rec['restarts'] - rec['not_recovered']}/{rec['restarts']}  "
                     f"median {rec['median_s']} s  [{rec['min_s']}-{rec['max_s']}]")
    for name, crashes in r.get("crashes", {}).items():
        lines.append(f"  CRASHED {name}: {len(crashes)} exit(s), rc {[c['rc'] for c in crashes]}")
    if t:
        lines.append(f"trades: {t['trades_expected']:,} expected; missing {t['trades_missing']}, doubled "
                     f"{t['trades_doubled']}, unexpected {t['trades_unexpected']}, differing {t['trades_differing']}, "
                     f"gap markers {t['gap_markers']}")
        lines.append(f"candles: {t['candles_compared']:,} of {t['candles_expected']:,} compared with pandas; missing "
                     f"{t['candles_missing']}, extra {t['candles_extra']}, doubled {t['candles_doubled']}, "
                     f"differing {t['candles_differing']} (revised {t['candles_revised']})")
        lines.append(f"alerts: {t['alerts_expected']} expected (backtest); missing {t['alerts_missing']}, extra "
                     f"{t['alerts_extra']}, duplicated {t['alerts_duplicated']}, differing {t['alerts_differing']} "
                     f"(ids repeated on the wire, deduped by Idempotency-Key: {t['webhook_raw_repeated_ids']})")
        lines.append(f"notifier: {t['alerts_published']} published by the engine; not delivered "
                     f"{t['notifier_missing']}, delivered but never published {t['notifier_extra']}, twice "
                     f"{t['notifier_duplicated']}, changed {t['notifier_differing']}")
    inj = r.get("injected")
    if inj:
        lines.append(f"injected {inj['entries']} malformed entries; {inj['dead_lettered']} named in dead letters; "
                     f"dead-letter bytes {inj['dead_letter_bytes']}")
    if "sabotage" in r:
        s = r["sabotage"]
        lines.append(f"sabotage found: {s['found']} trades doubled {s['found_trades_doubled']}")
    return lines
