"""`sentinel gui` (DearPyGui) under Xvfb on a real replay: market_feed replays a real Kraken recording through
candle_builder and alert_engine (the real services, in this process, on the test's redis) while `sentinel gui` runs
against that redis and the API. The panel must hold exactly the 5m candles pandas makes from the same trades (the
first from the API's history, the rest live from the Redis channels), its alert feed must list the alert the engine
fired during the replay, and the screenshot must show candles in the panel's bull and bear colours."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pandas as pd
import pytest

from sentinel.gui import BEAR, BODY, BULL, SEVERITY
from shared.fmt import plain
from sentinel.pipeline import Pipeline, wait_drained
from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings as EngineSettings
from services.api.app import ApiApp
from services.api.settings import Settings as ApiSettings
from services.candle_builder.app import CandleBuilderApp
from services.candle_builder.settings import Settings as BuilderSettings
from services.market_feed.app import MarketFeedApp
from services.market_feed.settings import Settings as FeedSettings
from shared import streams
from shared.runtime import connect
from tests.browser.test_dashboard import _until
from tests.conftest import shared_data

RECORDING = "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv"  # one hour, 10749 → 11014
EX, SYM, TF = "kraken", "BTC/USD", "5m"
SPEED = 300  # the hour in 12 s: the GUI starts a few candles in and sees the rest arrive live
RULES = """rules:
  - name: gui_breakout
    exchange: kraken
    symbols: [BTC/USD]
    timeframe: 5m
    condition: {left: close, op: above, right: 10900}
    cooldown: 2h
    severity: warning
    message: "{symbol} closed at {close}"
"""
SCREENSHOTS = Path(os.environ.get("SENTINEL_SCREENSHOTS", "bench/results"))


def xvfb_binary() -> str:
    if shutil.which("Xvfb") is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "xvfb"], capture_output=True, check=False, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    path = shutil.which("Xvfb")
    if path is None:
        pytest.fail("Xvfb is missing and `apt-get install -y xvfb` did not provide it")
    return path


@pytest.fixture
def display() -> Iterator[str]:
    """A private Xvfb server (the display number it picked itself), stopped after the test."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([xvfb_binary(), "-displayfd", str(write_end), "-screen", "0", "1024x768x24",
                             "-nolisten", "tcp"], pass_fds=(write_end,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 15)
        number = os.read(read_end, 32).decode().strip() if ready else ""
        if not number:
            pytest.fail("Xvfb did not report a display within 15 s")
        yield f":{number}"
    finally:
        os.close(read_end)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_png(path: Path) -> tuple[int, int, int, bytes]:
    """(width, height, channels, raw pixels) of an 8-bit RGB/RGBA non-interlaced PNG (enough for a frame dump)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            channels = {2: 3, 6: 4}[color]
            if depth != 8:
                raise ValueError("only 8-bit PNGs")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if f == 1:
                line[x] = (line[x] + a) & 0xFF
            elif f == 2:
                line[x] = (line[x] + b) & 0xFF
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out += line
        prev = line
    return width, height, channels, bytes(out)


def is_bull(r: int, g: int, b: int) -> bool:
    """Teal like BULL, also where antialiasing blended it with the dark background."""
    return g > 1.5 * r and g > 70 and abs(g - b) < 20


def is_bear(r: int, g: int, b: int) -> bool:
    """Red like BEAR, also blended."""
    return r > 1.6 * g and r > 90 and abs(g - b) < 15


def spans(pixels: bytes, width: int, channels: int, match, region: tuple[int, int]) -> list[tuple[int, int]]:
    """Runs of adjacent columns holding ≥ 1 matching pixel in the top-left ``region`` (width, height): one per candle
    of that colour (a body and its wick), as (first column, last column)."""
    per_column = [0] * width
    for y in range(region[1]):
        row = y * width * channels
        for x in range(min(region[0], width)):
            i = row + x * channels
            if match(pixels[i], pixels[i + 1], pixels[i + 2]):
                per_column[x] += 1
    out, start = [], None
    for x, n in enumerate([*per_column, 0]):
        if n >= 1 and start is None:
            start = x
        elif n < 1 and start is not None:
            if sum(per_column[start:x]) >= 6:  # not a stray antialiased pixel
                out.append((start, x - 1))
            start = None
    return out


def amber_columns(pixels: bytes, width: int, channels: int, region: tuple[int, int]) -> list[int]:
    """Columns of the region holding pixels of the warning marker's colour."""
    r0, g0, b0 = SEVERITY["warning"][:3]
    found = set()
    for y in range(region[1]):
        row = y * width * channels
        for x in range(min(region[0], width)):
            i = row + x * channels
            if abs(pixels[i] - r0) < 30 and abs(pixels[i + 1] - g0) < 30 and abs(pixels[i + 2] - b0) < 30:
                found.add(x)
    return sorted(found)


def pandas_candles(tf: str = "5min") -> pd.DataFrame:
    """Independent: OHLC of the recording per bucket by pandas resample, on exact decimals (bucket start in ms)."""
    df = pd.read_csv(shared_data(RECORDING), dtype={"price": str})
    df["price"] = df["price"].map(Decimal)
    df.index = pd.to_datetime(df["timestamp"], unit="ms", utc=True)
    r = df["price"].resample(tf, origin="epoch", label="left", closed="left")
    out = pd.DataFrame({"open": r.first(), "close": r.last()}).dropna()
    out.index = out.index.as_unit("ms").asi8
    return out


def sentinel_command() -> list[str]:
    script = Path(sys.executable).parent / "sentinel"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sentinel.cli"]


async def test_gui_draws_a_replay_and_its_alert_under_xvfb(redis_url, redis, tmp_path, display):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    client = connect(redis_url)
    common = {"redis_url": redis_url, "data_dir": tmp_path}
    pipeline = Pipeline(client)
    api = ApiApp(ApiSettings(port=0, shutdown_grace_s=1, **common), client)
    feed = MarketFeedApp(FeedSettings(mode="replay", replay_file=shared_data(RECORDING), exchange=EX, symbol=SYM,
                                      speed=SPEED, **common), client)
    pipeline.add("api", api)
    pipeline.add("candle_builder", CandleBuilderApp(BuilderSettings(**common), client))
    pipeline.add("alert_engine", AlertEngineApp(EngineSettings(rules_file=rules, reload_every_s=0.2,
                                                               registry_poll_s=0.2, **common), client))
    pipeline.add("market_feed", feed)
    shot, summary = tmp_path / "gui.png", tmp_path / "gui.json"
    proc = None
    pipeline.start()
    try:
        await asyncio.wait_for(api.started.wait(), 15)
        async with httpx.AsyncClient(base_url=api.url) as http:
            async def some_candles() -> bool:
                return len((await http.get(f"/candles/{EX}/BTC-USD/{TF}")).json()["candles"]) >= 2
            await _until(some_candles, 30, "the replay's first closed 5m candles")

            proc = await asyncio.create_subprocess_exec(
                *sentinel_command(), "gui", "--series", f"{EX}|{SYM}|{TF}", "--redis-url", redis_url,
                "--api", api.url, "--duration", "120", "--screenshot", str(shot), "--summary", str(summary),
                env={**os.environ, "DISPLAY": display}, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            channel = streams.channel_candles(EX, SYM, TF)

            async def gui_subscribed() -> bool:
                if proc.returncode is not None:
                    pytest.fail(f"sentinel gui exited early: {(await proc.stdout.read()).decode()[-3000:]}")
                return dict(await client.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1
            await _until(gui_subscribed, 30, "sentinel gui to subscribe to the candle channel")
            live_after_subscribe = not feed.done

            await wait_drained(client, lambda: feed.done, pipeline, settle=1.0, timeout=60)
            fired = (await http.get("/alerts/history", params={"rule": "gui_breakout"})).json()["items"]
        await asyncio.sleep(1.0)  # the last pub/sub messages reach the panel and a frame
        proc.send_signal(signal.SIGTERM)  # closes like the window's close button: screenshot and summary saved
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await pipeline.shutdown(grace=10)
        await client.aclose()
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    drawn = json.loads(summary.read_text())

    # the panel holds exactly pandas' 5m candles of the recording (trade_suite's frame: dates in seconds)
    expected = pandas_candles()
    assert drawn["dates"] == [ts / 1000 for ts in expected.index]
    assert drawn["closes"] == [float(c) for c in expected["close"]]
    # history came with NEW_CANDLES, the rest live through the Redis channel as UPDATED_CANDLES
    received = drawn["received"]
    assert received.get("new_candles", 0) >= 1
    assert live_after_subscribe and received.get("updated_candles", 0) >= 1, received
    assert drawn["trades"] > 0  # the throttled trades channel reached the tape

    # the engine's alert (fired during the replay) is in the feed and marked on its bar
    assert len(fired) == 1, fired
    alert = fired[0]["alert"]
    assert alert["id"] in drawn["alerts"]
    first_above = next(ts for ts, c in zip(expected.index, expected["close"], strict=True) if c > 10900)
    assert alert["ts"] == first_above  # independent: the first 5m close above 10900 by pandas
    assert drawn["markers"] == {"info": [], "warning": [first_above / 1000], "critical": []}
    assert drawn["alert_lines"] == [f"07-01 00:20 ! gui_breakout @ {plain(alert['price'])}"]
    assert first_above == 1561940400000  # 2019-07-01 00:20 UTC: the line's time is the bar's, in UTC
    assert drawn["clock"] == {"use_24hour_clock": True, "use_local_time": False}  # 24-hour UTC times

    # the first and the live bar lie inside the x range with room for their bodies
    tf_s = 300
    x0, x1 = drawn["x_limits"]
    assert x0 <= drawn["dates"][0] - tf_s * 0.4 and x1 >= drawn["dates"][-1] + tf_s * 0.4, (x0, x1)
    # the layout follows the window: the chart column and the side panel share its width, the plots its height
    vw, vh = drawn["viewport"]
    rects = drawn["rects"]
    assert rects["price_plot"][0] + rects["side"][0] >= 0.9 * vw and rects["side"][0] >= 0.2 * vw
    assert rects["price_plot"][1] + rects["lower_plot"][1] >= 0.85 * vh

    # a smaller window: the same shares of it (the data are still in Redis and the API is gone: history is not needed)
    small = tmp_path / "small.json"
    again = await asyncio.create_subprocess_exec(
        *sentinel_command(), "gui", "--series", f"{EX}|{SYM}|{TF}", "--redis-url", redis_url, "--api",
        "http://127.0.0.1:9", "--duration", "2", "--size", "800x600", "--summary", str(small),
        env={**os.environ, "DISPLAY": display}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out2, _ = await asyncio.wait_for(again.communicate(), 60)
    assert again.returncode == 0, out2.decode(errors="replace")[-3000:]
    resized = json.loads(small.read_text())
    sw, sh = resized["viewport"]
    assert (sw, sh) != (vw, vh) and sw <= 800 and sh <= 600
    r2 = resized["rects"]
    assert r2["price_plot"][0] + r2["side"][0] >= 0.9 * sw and r2["side"][0] >= 0.2 * sw
    assert r2["price_plot"][1] + r2["lower_plot"][1] >= 0.85 * sh
    assert r2["price_plot"][0] < rects["price_plot"][0] and r2["price_plot"][1] < rects["price_plot"][1]

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / "gui.png")
    width, height, channels, pixels = read_png(shot)
    assert (width, height) >= (800, 600)
    region = (int(rects["price_plot"][0]), int(rects["price_plot"][1]) + 30)  # the price plot, below the title row
    ups = int((expected["close"] >= expected["open"]).sum())
    downs = len(expected) - ups
    assert is_bull(*BULL[:3]) and is_bear(*BEAR[:3]) and not is_bull(*BEAR[:3])
    bull, bear = spans(pixels, width, channels, is_bull, region), spans(pixels, width, channels, is_bear, region)
    assert ups - 1 <= len(bull) <= ups and downs - 1 <= len(bear) <= downs, (bull, bear)
    # real bodies: each candle's coloured columns span about BODY of its timeframe in pixels, first and last whole
    body_px = (region[0] - 70) * (BODY * tf_s) / (x1 - x0)  # the plot area is the rect less the price labels
    widths = sorted(b - a + 1 for a, b in bull + bear)
    assert widths[0] >= 0.6 * body_px and widths[-1] <= 1.25 * body_px + 2, (widths, body_px)
    # the alert's marker: amber pixels over its bar, none elsewhere in the price plot
    columns = amber_columns(pixels, width, channels, region)
    assert columns, "no alert marker drawn"
    bar_index = list(expected.index).index(first_above)
    left, right = sorted(bull + bear)[bar_index]
    assert all(left - 6 <= x <= right + 6 for x in columns), (columns, left, right)
