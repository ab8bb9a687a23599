"""The web dashboard in a real headless Chromium, on the real pipeline replaying a real Kraken recording.

The page loads from the API, the chart draws the replay's candles (compared with pandas on the same trades), a
rule typed into the page is saved through the API, the alert engine picks it up live, and its alert appears in the
page's log and as a chart marker without a reload.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings as EngineSettings
from services.api.app import STATIC_DIR, ApiApp
from services.api.settings import Settings as ApiSettings
from services.candle_builder.app import CandleBuilderApp
from services.candle_builder.settings import Settings as BuilderSettings
from services.market_feed.app import MarketFeedApp
from services.market_feed.settings import Settings as FeedSettings
from shared.runtime import connect
from tests.conftest import shared_data
from tests.support.candles import candles_stream

RECORDING = "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv"
SCREENSHOTS = Path(os.environ.get("SENTINEL_SCREENSHOTS", "bench/results"))


async def _until(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def pipeline(redis_url, redis, tmp_path):
    """market_feed (replay ×60) → candle_builder → alert_engine (no file rules) → API, in this event loop."""
    if not (STATIC_DIR / "index.html").exists():
        pytest.fail("dashboard not built: run `npm ci && npm run build` in web/")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    client = connect(redis_url)
    common = {"redis_url": redis_url, "data_dir": tmp_path}
    apps = {
        "market_feed": MarketFeedApp(FeedSettings(mode="replay", replay_file=shared_data(RECORDING), exchange="kraken",
                                                  symbol="BTC/USD", speed=60, **common), client),
        "candle_builder": CandleBuilderApp(BuilderSettings(**common), client),
        "alert_engine": AlertEngineApp(EngineSettings(rules_file=rules, reload_every_s=0.2, registry_poll_s=0.2,
                                                      **common), client),
    }
    api = ApiApp(ApiSettings(port=0, shutdown_grace_s=1, services=["market_feed", "candle_builder", "alert_engine",
                                                                    "notifier", "api"], **common), client)
    apps["api"] = api
    stop = asyncio.Event()
    tasks = [asyncio.create_task(app.run(stop), name=name) for name, app in apps.items()]
    await asyncio.wait_for(api.started.wait(), 15)
    yield api
    stop.set()
    done, pending = await asyncio.wait(tasks, timeout=15)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()


def pandas_1m_closes(n: int) -> list[float]:
    """Independent: the first n 1m closes of the recording, by pandas resample."""
    df = pd.read_csv(shared_data(RECORDING))
    df["t"] = pd.to_datetime(df["timestamp"], unit="ms", utc=True)
    closes = df.set_index("t")["price"].resample("1min").last().dropna()
    return [float(x) for x in closes.iloc[:n]]


async def test_dashboard_draws_the_replay_and_a_rule_added_in_the_page_fires_live(pipeline, browser):
    api = pipeline
    page = await browser.new_page(viewport={"width": 1400, "height": 980})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    import httpx

    async with httpx.AsyncClient(base_url=api.url) as http:
        async def has_candles() -> bool:
            body = (await http.get("/candles/kraken/BTC-USD/1m")).json()
            return len(body["candles"]) >= 3
        await _until(has_candles, 30, "the first closed candles")

        async def services_beat() -> bool:
            health = (await http.get("/health")).json()
            return all(health["services"][s]["status"] == "ok" for s in ("market_feed", "candle_builder",
                                                                           "alert_engine", "api"))
        # the real services' heartbeats; the notifier is not running here, and /health says so with a 503
        await _until(services_beat, 15, "heartbeats of the running services")
        health = await http.get("/health")
        assert health.status_code == 503 and health.json()["problems"] == ["notifier: no heartbeat"]
        trades = [s for s in health.json()["streams"] if s["stream"].endswith(":trades")]
        assert trades and trades[0]["group"] == "candle_builder" and trades[0]["status"] == "ok"

    await page.goto(f"{api.url}/#series=kraken|BTC/USD|1m")
    chart = page.locator("#chart")

    async def drawn() -> bool:
        return int(await chart.get_attribute("data-candles") or 0) >= 4
    await _until(drawn, 20, "candles on the chart")
    assert await page.locator("canvas").count() > 0

    # the candles the page holds are the replay's, as pandas makes them from the same trades
    page_closes = await page.evaluate(
        "() => [...window.sentinelDashboard.closed.values()].sort((a, b) => a.ts - b.ts).map(c => Number(c.close))")
    assert len(page_closes) >= 3
    assert page_closes == pandas_1m_closes(len(page_closes))

    rule = {"name": "page_rule", "exchange": "kraken", "symbols": ["BTC/USD"], "timeframe": "1m",
            "condition": {"left": "close", "op": "above", "right": 1000}, "severity": "warning",
            "message": "{symbol} closed at {close}"}
    await page.click("#editor summary")  # the YAML view, for power users (the form is the other way in)
    await page.fill("#rule-text", json.dumps(rule, indent=2))
    await page.click("#rule-save")
    await page.wait_for_selector("#rules-table tr[data-rule='page_rule']", timeout=10_000)

    # a bad rule typed in the page shows the rules-file style errors
    await page.fill("#rule-text", "name: broken\nsymbols: [BTC/USD]\ncondition: {left: close, op: sideways, right: 1}")
    await page.click("#rule-save")
    await page.wait_for_function("document.getElementById('rule-errors').textContent.includes('request body:3')",
                                 timeout=10_000)

    await page.wait_for_selector("#alert-log li[data-rule='page_rule']", timeout=30_000)

    async def marked() -> bool:
        return int(await chart.get_attribute("data-markers") or 0) >= 1
    await _until(marked, 10, "an alert marker on the chart")
    grown = int(await chart.get_attribute("data-candles"))
    assert grown >= 4

    # snooze and disable from the table: the API (and so the engine) sees it
    async with httpx.AsyncClient(base_url=api.url) as http:
        row = page.locator("#rules-table tr[data-rule='page_rule']")
        await row.locator("button", has_text="snooze 1h").click()
        await page.wait_for_function(
            "document.querySelector(\"#rules-table tr[data-rule='page_rule'] td:nth-child(8)\").textContent !== ''",
            timeout=10_000)
        assert (await http.get("/rules/page_rule")).json()["snooze_until"] is not None
        await row.locator("button", has_text="disable").click()
        await page.wait_for_selector("#rules-table tr[data-rule='page_rule'] button:has-text('enable')",
                                     timeout=10_000)
        assert (await http.get("/rules/page_rule")).json()["enabled"] is False

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.wait_for_timeout(1500)  # let a few more live candles arrive for the picture
    await page.screenshot(path=str(SCREENSHOTS / "dashboard.png"))
    assert errors == []


FILE_RULE = {"name": "from_file", "exchange": "kraken", "symbols": ["BTC/USD"], "timeframe": "1m",
             "condition": {"left": "close", "op": "below", "right": 1}, "cooldown": "5m", "severity": "info"}


async def test_file_rules_have_a_badge_errors_show_by_the_table_and_disable_stores_an_override(pipeline, browser,
                                                                                               tmp_path):
    """A rules-file rule is marked `file` and offers disable, not delete. A delete the API refuses (409: the rule is
    only in the rules file, e.g. because another client reverted the override the page still shows) puts the API's
    own error text in a visible line above the rules table. Disable stores an override the table shows."""
    import httpx
    import yaml

    api = pipeline
    rules_file = tmp_path / "rules.yaml"  # the file the fixture's alert engine watches
    rules_file.write_text(yaml.safe_dump({"rules": [FILE_RULE]}, sort_keys=False))
    os.utime(rules_file, ns=(1, 1))  # a changed mtime, whatever the clock's resolution
    page = await browser.new_page(viewport={"width": 1400, "height": 980})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))

    async with httpx.AsyncClient(base_url=api.url) as http:
        async def listed() -> bool:
            return any(r["name"] == "from_file" and r["source"] == "file"
                       for r in (await http.get("/rules")).json()["rules"])
        await _until(listed, 15, "the alert engine to load its rules file")

        # the file-only rule: a `file` badge, disable offered, no delete
        await page.goto(f"{api.url}/#series=kraken|BTC/USD|1m&refresh=0")
        row = page.locator("#rules-table tr[data-rule='from_file']")
        await row.locator(".badge.file").wait_for(timeout=10_000)
        assert await row.locator("button", has_text="disable").count() == 1
        assert await row.locator("button", has_text="delete").count() == 0
        assert await row.locator("button", has_text="revert to file").count() == 0

        # an override made elsewhere: after a reload the page offers to revert it (DELETE of the override)
        override = {**FILE_RULE, "cooldown": "15m"}
        assert (await http.put("/rules/from_file", json=override)).status_code == 200
        await page.click("#refresh-rules")
        revert = row.locator("button", has_text="revert to file")
        await revert.wait_for(timeout=10_000)
        assert await row.locator(".badge.override").count() == 1

        # another client reverts it first; the page (not refreshed) still offers it: the click gets the API's 409
        assert (await http.delete("/rules/from_file")).status_code == 204
        refused = await http.delete("/rules/from_file")
        assert refused.status_code == 409
        await revert.click()
        message = page.locator("#rules-message")
        await page.wait_for_function(
            "document.getElementById('rules-message').textContent.includes(\"is in the alert engine's rules file\")",
            timeout=10_000)
        assert await message.is_visible()
        text = await message.text_content()
        assert text == f"delete from_file failed: {refused.json()['detail']}"  # the API's words, verbatim
        box, table = await message.bounding_box(), await page.locator("#rules-table").bounding_box()
        assert box["height"] > 0 and 0 <= table["y"] - (box["y"] + box["height"]) < 40  # right above the table
        colour = await message.evaluate("el => getComputedStyle(el).color")
        assert colour != await page.evaluate("getComputedStyle(document.body).color")  # set apart from the text
        await row.locator(".badge.file").wait_for(timeout=10_000)  # the table re-read: file-only again
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "dashboard_rule_error.png"))

        # disable: the API stores the file's rule, disabled, as an override; the table shows it
        await row.locator("button", has_text="disable").click()
        await row.locator("button", has_text="enable").wait_for(timeout=10_000)
        cells = await row.locator("td").all_text_contents()
        assert cells[4] == "no"
        assert await row.locator(".badge.override").count() == 1
        got = (await http.get("/rules/from_file")).json()
        assert (got["source"], got["overrides_file"], got["enabled"]) == ("api", True, False)
        assert yaml.safe_load((await http.get("/rules/export")).text)["rules"] == [{**FILE_RULE, "enabled": False}]
        assert "disable from_file: done" in await message.text_content()
        await page.screenshot(path=str(SCREENSHOTS / "dashboard_rule_disabled.png"))
    assert errors == []


async def test_a_page_opened_before_the_first_candle_shows_the_series_of_its_query(redis_url, redis, browser, tmp_path):
    """A dashboard opened on ``?series=`` while the pipeline has made nothing yet (the series list is empty, the
    candles endpoint answers 404) still watches that series: candles published afterwards appear on its chart."""
    from shared import streams
    from shared.bus import Bus
    from tests.integration.test_api_live import EX, SYM, TF, candle

    client = connect(redis_url)
    api = ApiApp(ApiSettings(port=0, shutdown_grace_s=1, redis_url=redis_url, data_dir=tmp_path), client)
    stop = asyncio.Event()
    task = asyncio.create_task(api.run(stop))
    await asyncio.wait_for(api.started.wait(), 15)
    try:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{api.url}/?series={EX}|{SYM}|{TF}&refresh=0")
        await page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=15_000)
        bus = Bus(client)
        for i in range(3):
            await bus.publish(candles_stream(EX, SYM, TF), candle(60_000 * (i + 1), True).encode(),
                              channel=streams.channel_candles(EX, SYM, TF))
        await page.wait_for_function("Number(document.getElementById('chart').dataset.candles) >= 3", timeout=15_000)
        assert errors == []
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await client.aclose()
