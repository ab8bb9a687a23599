"""Bad backtest output given to ``sentinel report``: one line naming the file, the line and the field."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SENTINEL = [sys.executable, "-m", "sentinel.cli"]
HEADER = "timestamp,open,high,low,close,volume,buy_volume,sell_volume,trades\n"


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SENTINEL, "report", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_bad_inputs_are_named_without_a_traceback(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    missing = _report(str(tmp_path / "nope"), "--rules", str(rules))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"error: {tmp_path / 'nope'}: no such folder" in missing.stderr

    out = tmp_path / "out"
    out.mkdir()
    (out / "candles_1m.csv").write_text(HEADER + "1723161240000,1,2,0.5,1.5,3,1,2,4\n"
                                        "1723161300000,1,2,abc,1.5,3,1,2,4\n")
    bad_row = _report(str(out), "--rules", str(rules))
    assert bad_row.returncode == 2 and "Traceback" not in bad_row.stderr
    assert f"{out / 'candles_1m.csv'}:3: field 'low' — expected a number, got 'abc'" in bad_row.stderr

    (out / "candles_1m.csv").write_text(HEADER + "1723161240000,1,2,0.5,1.5,3,1,2,4\n")
    (out / "alerts.jsonl").write_text('{"rule": "x"}\n')
    bad_alert = _report(str(out), "--rules", str(rules))
    assert bad_alert.returncode == 2 and f"{out / 'alerts.jsonl'}:1: not an alert record" in bad_alert.stderr

    (out / "alerts.jsonl").write_text("")
    rules.write_text("rules:\n  - name: x\n    symbols: [BTC/USDT]\n    condition: {op: nope}\n")
    bad_rules = _report(str(out), "--rules", str(rules))
    assert bad_rules.returncode == 2 and "rules.yaml:4" in bad_rules.stderr and "Traceback" not in bad_rules.stderr
