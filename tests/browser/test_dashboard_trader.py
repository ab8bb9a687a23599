"""The dashboard as a trader uses it, in headless Chromium on the real pipeline replaying a real Kraken recording:
the shipped sample rules and every example of docs/rules.md loaded as the engine's rules file, API rules with glob
symbols beside them; the create-alert form (condition builder, errors at the field, edit round trip); the chart's
indicators (compared with pandas), volume and markers; the alert log's filters, search, export and click-to-bar;
sound and browser notifications; ?series= and the symbol search; /docs and /redoc behind a token, without a CDN."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pandas as pd
import pytest
import yaml

from tests.browser.test_dashboard import SCREENSHOTS, _until, pipeline  # noqa: F401 (the fixture)
from shared.fmt import plain
from tests.conftest import REPO
from tests.integration.test_api_auth import serving
from tests.unit.alert_engine.pdref import bbands, ema

SAMPLE = REPO / "services" / "alert_engine" / "sample_rules.yaml"
DOCS = REPO / "docs" / "rules.md"
API_RULES = [
    {"name": "usd_trend", "symbols": "*/USD", "timeframe": "1m",
     "condition": {"left": {"ema": 3}, "op": "crosses_up", "right": {"sma": 5}}, "severity": "info"},
    {"name": "usd_bands", "symbols": "*/USD", "timeframe": "1m",
     "condition": {"left": "close", "op": "below", "right": {"bbands": {"period": 4, "k": 2, "output": "lower"}}}},
    {"name": "usd_every_bar", "exchange": "kraken", "symbols": ["BTC/USD"], "timeframe": "1m",
     "condition": {"op": "inside_channel", "lower": 1000, "upper": 100000}, "severity": "warning",
     "message": "{symbol} closed at {close} inside 1000-100000"},
]


def file_rules() -> list[dict]:
    """The sample rules and every rules example in docs/rules.md, as one rules file."""
    rules = yaml.safe_load(SAMPLE.read_text())["rules"]
    for block in re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S):
        rules += yaml.safe_load(block)["rules"]
    assert len({r["name"] for r in rules}) == len(rules)
    return rules


async def load_rules(api, tmp_path: Path) -> list[dict]:
    rules = file_rules()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
    async with httpx.AsyncClient(base_url=api.url) as http:
        for rule in API_RULES:
            assert (await http.post("/rules", json=rule)).status_code == 201

        async def all_listed() -> bool:
            return len((await http.get("/rules")).json()["rules"]) == len(rules) + len(API_RULES)
        await _until(all_listed, 20, "the engine to load the sample and docs rules")
    return rules


async def open_page(browser, url: str):
    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    await context.grant_permissions(["notifications"])
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    return page, errors


async def test_every_rule_kind_lists_and_the_chart_shows_their_indicators(pipeline, browser, tmp_path):  # noqa: F811
    api = pipeline
    rules = await load_rules(api, tmp_path)
    page, errors = await open_page(browser, f"{api.url}/?series=kraken|BTC/USD|1m&refresh=0")
    await page.wait_for_function("Number(document.getElementById('chart').dataset.candles) >= 6", timeout=60_000)
    await page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=10_000)
    await page.click("#refresh-rules")
    rows = page.locator("#rules-table tbody tr")
    await page.wait_for_function(f"document.querySelectorAll('#rules-table tbody tr').length === {len(rules) + 3}",
                                 timeout=10_000)
    # glob symbols and every condition kind read as words
    texts = {await r.get_attribute("data-rule"): await r.locator("td").all_text_contents() for r in await rows.all()}
    assert texts["ema_9_21_cross_up"][1] == "*/USDT"
    assert texts["btc_outside_range"][3] == "close outside channel 58000–62000"
    assert texts["fast_move_up"][3] == "close up 0.6% in 3 bars"
    assert texts["volume_spike"][3] == "volume > 3× avg(20)"
    assert texts["dump"][3] == "(close down 3% within 10m or close down 1.5% in 1 bar)"
    assert "ema(50) above ema(200) [on 4h]" in texts["trend_aligned_breakout"][3]
    assert texts["usd_trend"][1] == "*/USD"

    # the chart: the API rules on */USD put their indicators and levels on kraken BTC/USD; the file rules (USDT) none
    await page.wait_for_function("document.getElementById('chart').dataset.indicators.includes('ema(3)')",
                                 timeout=10_000)
    shown = (await page.locator("#chart").get_attribute("data-indicators")).split(";")
    assert sorted(shown) == sorted(["ema(3)", "sma(5)", "bbands(4,2) upper", "bbands(4,2) middle",
                                    "bbands(4,2) lower"])
    assert (await page.locator("#chart").get_attribute("data-levels")).split(";") == ["1000", "100000"]
    assert await page.locator("#chart").get_attribute("data-volume") == \
        await page.locator("#chart").get_attribute("data-candles")
    # (drawn and read in one task: an in-progress candle that came after the last redraw would otherwise be in the
    # bars and not yet in the drawn indicators)
    page_state = await page.evaluate("""() => {
        const d = window.sentinelDashboard;
        d.chart.redraw();
        const bars = d.chart.bars();
        return {closes: bars.map(c => Number(c.close)), values: d.chart.values};
    }""")
    closes = pd.Series(page_state["closes"])
    expected_ema = ema(closes, 3)
    upper, middle, lower = bbands(closes, 4, 2.0)
    for name, reference in (("ema(3)", expected_ema), ("bbands(4,2) upper", upper), ("bbands(4,2) lower", lower),
                            ("sma(5)", closes.rolling(5).mean())):
        got = pd.Series([float("nan") if v is None else v for v in page_state["values"][name]])
        pd.testing.assert_series_equal(got, reference.astype(float), check_names=False, rtol=1e-9)

    # unticking a rule's "chart" box takes its overlays off
    await page.locator("#rules-table tr[data-rule='usd_bands'] .show-on-chart").uncheck()
    await page.wait_for_function("!document.getElementById('chart').dataset.indicators.includes('bbands')",
                                 timeout=5_000)
    await page.locator("#rules-table tr[data-rule='usd_bands'] .show-on-chart").check()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.evaluate("window.scrollTo(0, 0)")
    await page.wait_for_timeout(500)
    await page.screenshot(path=str(SCREENSHOTS / "dashboard_rules_and_indicators.png"), full_page=True)
    assert errors == []


async def test_the_create_alert_form_saves_edits_and_shows_errors_at_the_field(pipeline, browser, tmp_path):  # noqa: F811
    api = pipeline
    page, errors = await open_page(browser, f"{api.url}/?series=kraken|BTC/USD|1m&refresh=0")
    await page.wait_for_function("Number(document.getElementById('chart').dataset.candles) >= 2", timeout=60_000)
    await page.click("#new-rule")
    form = page.locator("#rule-form")
    await form.locator("#rf-name").fill("form_rule")
    await form.locator("#rf-symbols").fill("*/USD")
    leaf = form.locator(".leaf").first
    await leaf.locator(".operand.left .operand-kind").select_option("indicator")
    await leaf.locator(".operand.left .indicator").select_option("ema")
    await leaf.locator(".operand.left [data-param='period']").fill("3")
    await leaf.locator(".op").select_option("crosses_up")
    await leaf.locator(".operand.right .indicator").select_option("sma")
    await leaf.locator(".operand.right [data-param='period']").fill("5")
    await form.locator(".add-condition").first.click()
    second = form.locator(".leaf").nth(1)
    await second.locator(".op").select_option("greater_than")
    await second.locator(".operand.right .operand-kind").select_option("number")
    await second.locator(".operand.right .number").fill("10000.5")
    await form.locator(".group .mode").first.select_option("any")
    await form.locator("#rf-frequency").select_option("once_per_bar")
    await form.locator("#rf-cooldown").fill("5m")
    await form.locator("#rf-for").fill("1m")
    await form.locator("#rf-expires").fill("2030-01-02T03:04")
    await form.locator("#rf-resolve").check()
    await form.locator("#rf-channels").fill("console, jsonl")
    await form.locator("#rf-severity").select_option("critical")
    await form.locator("#rf-message").fill("")
    await form.locator(".chip", has_text="{symbol}").click()
    await form.locator("#rf-message").press("End")
    await form.locator("#rf-message").type(" at ")
    last_close = "() => window.sentinelDashboard.chart.bars().slice(-1)[0].close"
    before = await page.evaluate(last_close)
    await form.locator(".chip", has_text="{close}").click()
    preview = await form.locator("#rf-preview").text_content()
    after = await page.evaluate(last_close)  # (the live bar may change in between: the preview is one of the two)
    assert preview in {f"BTC/USD at {plain(before)}", f"BTC/USD at {plain(after)}"}, (preview, before, after)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "dashboard_form.png"))
    await form.locator("#rf-save").click()
    await page.wait_for_selector("#rules-table tr[data-rule='form_rule']", timeout=10_000)

    expected = {"name": "form_rule", "exchange": "kraken", "symbols": "*/USD", "timeframe": "1m",
                "condition": {"any": [{"left": {"ema": 3}, "op": "crosses_up", "right": {"sma": 5}},
                                      {"left": "close", "op": "greater_than", "right": 10000.5}]},
                "frequency": "once_per_bar", "cooldown": "5m", "for": "1m", "expires_at": "2030-01-02T03:04:00Z",
                "notify_on_resolve": True, "channels": ["console", "jsonl"], "severity": "critical",
                "message": "{symbol} at {close}"}
    async with httpx.AsyncClient(base_url=api.url) as http:
        stored = (await http.get("/rules/form_rule")).json()
    assert stored["rule"] == expected

    # edit: the form opens with the stored rule and reads it back unchanged
    await page.locator("#rules-table tr[data-rule='form_rule'] button", has_text="edit").click()
    await page.wait_for_function("document.getElementById('rule-form').open")
    assert await page.evaluate("() => window.sentinelDashboard.form.read()") == expected

    # the engine's parser (through the API) answers; each problem shows at its field
    await form.locator("#rf-cooldown").fill("5 minutes")
    await form.locator(".leaf").first.locator(".operand.left [data-param='period']").fill("0")
    await form.locator("#rf-save").click()
    cooldown_error = form.locator(".field[data-path='cooldown'] .field-error")
    await cooldown_error.wait_for(timeout=10_000)
    assert "expected a duration such as 30s, 5m" in await cooldown_error.text_content()
    period_error = form.locator(".field-error[data-path='condition.any[0].left.ema.period']")
    assert "greater than or equal to 1" in await period_error.text_content()
    assert await form.locator("#rf-cooldown").evaluate("el => el.classList.contains('invalid')")
    await page.screenshot(path=str(SCREENSHOTS / "dashboard_form_errors.png"))
    async with httpx.AsyncClient(base_url=api.url) as http:
        assert (await http.get("/rules/form_rule")).json()["rule"] == expected  # nothing stored
    assert errors == []


async def test_the_alert_log_filters_exports_and_shows_an_alert_on_the_chart(pipeline, browser, tmp_path):  # noqa: F811
    api = pipeline
    page, errors = await open_page(browser, f"{api.url}/#series=kraken|BTC/USD|5m&refresh=0")
    await page.locator("#opt-sound").check()
    await page.locator("#opt-notify").check()
    async with httpx.AsyncClient(base_url=api.url) as http:
        for rule in API_RULES[2:]:
            assert (await http.post("/rules", json=rule)).status_code == 201
        assert (await http.post("/rules", json={**API_RULES[2], "name": "usd_every_bar_info", "severity": "info",
                                                 "message": "quiet {close}"})).status_code == 201

        async def fired() -> bool:
            items = (await http.get("/alerts/history", params={"limit": 1000})).json()["items"]
            return len(items) >= 8
        await _until(fired, 60, "alerts of the every-bar rules")
        await page.wait_for_function("document.querySelectorAll('#alert-log li').length >= 8", timeout=10_000)
        assert await page.evaluate("() => window.sentinelDashboard.log.notified") >= 1  # fresh alerts announced
        assert await page.evaluate("() => window.sentinelDashboard.log.beeps") >= 1
        items = [i["alert"] for i in (await http.get("/alerts/history", params={"limit": 1000})).json()["items"]]

    shown = await page.evaluate("() => window.sentinelDashboard.alerts.size")
    assert shown >= len(items) - 2  # the history, plus what arrived live meanwhile
    await page.locator("#f-severity").select_option("warning")
    await page.locator("#f-search").fill("inside")
    await page.wait_for_timeout(200)
    listed = await page.locator("#alert-log li").evaluate_all("els => els.map(e => e.dataset.id)")
    everything = await page.evaluate("() => [...window.sentinelDashboard.alerts.values()]")
    wanted = sorted((a for a in everything if a["severity"] == "warning" and "inside" in a["message"].lower()),
                    key=lambda a: (-a["fired_at"], [-ord(ch) for ch in a["id"]]))
    assert listed == [a["id"] for a in wanted] and listed
    assert all(a["rule"] == "usd_every_bar" for a in wanted)

    async with page.expect_download() as info:
        await page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(await (await info.value).path()).read_text())))
    # the replay goes on: alerts that arrived since `listed` was read come first (newest first), the rest is listed
    assert _ends_with([r["id"] for r in rows], listed) and {r["severity"] for r in rows} == {"warning"}
    assert rows[0]["price"] == next(a["price"] for a in wanted if a["id"] == rows[0]["id"])
    async with page.expect_download() as info:
        await page.click("#export-json")
    exported = json.loads(Path(await (await info.value).path()).read_text())
    assert _ends_with([a["id"] for a in exported], listed)
    assert all(a["severity"] == "warning" and "inside" in a["message"].lower() for a in exported)

    # the time range: nothing fired in the recording's hour after 2019-07-01 00:10 UTC is before 00:10
    await page.locator("#f-from").fill("2019-07-01T00:10")
    await page.wait_for_timeout(200)
    late = await page.locator("#alert-log li").evaluate_all("els => els.map(e => e.dataset.id)")
    assert late == [a["id"] for a in wanted if a["fired_at"] >= 1561939800000]

    # click an alert on the 1m series: the chart switches to it and scrolls to the alert's bar
    await page.click("#f-clear")
    target = next(a for a in everything if a["rule"] == "usd_every_bar_info")
    await page.locator(f"#alert-log li[data-id='{target['id']}']").click()
    await page.wait_for_function(f"document.getElementById('chart').dataset.focus === '{target['ts']}'",
                                 timeout=10_000)
    series = await page.evaluate("() => window.sentinelDashboard.series")
    assert (series["exchange"], series["symbol"], series["timeframe"]) == ("kraken", "BTC/USD", "1m")
    seen = await page.evaluate("() => window.sentinelDashboard.chart.visibleRange()")
    assert seen["from"] <= target["ts"] <= seen["to"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "dashboard_alert_log.png"))
    assert errors == []


async def test_series_from_the_query_the_symbol_search_and_timeframe_buttons(pipeline, browser):  # noqa: F811
    api = pipeline
    async with httpx.AsyncClient(base_url=api.url) as http:
        async def timeframes() -> bool:
            return {"1m", "5m"} <= {s["timeframe"] for s in (await http.get("/series")).json()["series"]}
        await _until(timeframes, 60, "1m and 5m series")
    page, errors = await open_page(browser, f"{api.url}/?series=kraken|BTC/USD|5m&refresh=0")
    await page.wait_for_function("window.sentinelDashboard.series && window.sentinelDashboard.series.timeframe === '5m'",
                                 timeout=10_000)
    await page.locator("#tf-buttons button", has_text="1m").click()
    await page.wait_for_function("window.sentinelDashboard.series.timeframe === '1m'", timeout=10_000)
    assert (await page.evaluate("location.search")) == "?series=kraken%7CBTC%2FUSD%7C1m&refresh=0"
    await page.locator("#series-search").fill("btcusd")
    await page.locator("#series-search").dispatch_event("change")
    await page.wait_for_function("document.getElementById('series-search').value === 'kraken BTC/USD'")
    assert errors == []


async def test_docs_and_redoc_are_shipped_and_behind_the_token(redis_url, redis, browser):
    async with serving(redis_url, api_token="s3cret") as api:
        context = await browser.new_context(viewport={"width": 1200, "height": 900})
        page = await context.new_page()
        hosts: set[str] = set()
        page.on("request", lambda request: hosts.add(urlsplit(request.url).hostname or ""))
        await page.goto(f"{api.url}/docs")
        await page.locator("#token-gate").wait_for(timeout=10_000)  # the document needs the token
        await page.fill("#gate-token", "s3cret")
        await page.click("#token-gate button")
        await page.locator(".opblock-summary-path", has_text="/rules/{name}").first.wait_for(timeout=15_000)
        await page.screenshot(path=str(SCREENSHOTS / "docs_swagger.png"))
        await page.goto(f"{api.url}/redoc")  # the token is remembered in this browser
        await page.get_by_text("sentinel API").first.wait_for(timeout=15_000)
        await page.get_by_text("/alerts/history").first.wait_for(timeout=15_000)
        await page.screenshot(path=str(SCREENSHOTS / "docs_redoc.png"))
        assert hosts - {""} == {"127.0.0.1"}, hosts  # nothing from a CDN ("": data: and blob: URLs)

        # the dashboard loads without the token but gets no data: it asks for the token
        anonymous = await (await browser.new_context()).new_page()
        statuses: list[tuple[str, int]] = []
        anonymous.on("response", lambda r: statuses.append((urlsplit(r.url).path, r.status)))
        await anonymous.goto(f"{api.url}/")
        await anonymous.wait_for_function(
            "document.getElementById('rules-message').textContent.includes('wants a bearer token')", timeout=10_000)
        assert ("/series", 401) in statuses
        assert all(status == 401 for path, status in statuses if path not in ("/", "/app.js", "/style.css"))


pytestmark = pytest.mark.timeout(240)


def _ends_with(ids: list[str], listed: list[str]) -> bool:
    """``ids`` (an export, newest first) is what was listed, after any alerts that came in since."""
    return len(ids) >= len(listed) and ids[len(ids) - len(listed):] == listed
