"""`sentinel gui` (DearPyGui) under Xvfb: history from the API, live candles and an alert from Redis channels; the
screenshot must show candles in the panel's bull and bear colours."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from decimal import Decimal
from pathlib import Path

import pytest

from sentinel.gui import BEAR, BULL
from services.api.app import ApiApp
from services.api.settings import Settings
from shared import streams
from shared.bus import Bus
from shared.runtime import connect
from shared.schemas import Alert, Candle

EX, SYM, TF = "sim", "BTC/USDT", "1m"
SCREENSHOTS = Path(os.environ.get("SENTINEL_SCREENSHOTS", "bench/results"))


def xvfb_run() -> str:
    if shutil.which("xvfb-run") is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "xvfb"], capture_output=True, check=False, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    path = shutil.which("xvfb-run")
    if path is None:
        pytest.fail("xvfb-run is missing and `apt-get install -y xvfb` did not provide it")
    return path


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


def strokes(pixels: bytes, width: int, height: int, channels: int, match, right: float = 0.7,
            bottom: float = 0.62) -> int:
    """Separate vertical strokes (runs of adjacent columns with ≥ 6 matching pixels) in the candle plot's region."""
    per_column = [0] * width
    for y in range(int(height * bottom)):
        row = y * width * channels
        for x in range(int(width * right)):
            i = row + x * channels
            if match(pixels[i], pixels[i + 1], pixels[i + 2]):
                per_column[x] += 1
    count, inside = 0, False
    for n in per_column:
        if n >= 6 and not inside:
            count += 1
        inside = n >= 6
    return count


def candle(i: int, closed: bool = True) -> Candle:
    up = i % 3 != 0
    o = Decimal(60000 + 40 * i)
    c = o + (Decimal(60) if up else Decimal(-50))
    return Candle(exchange=EX, symbol=SYM, timeframe=TF, ts=1_700_000_000_000 + i * 60_000, open=o,
                  high=max(o, c) + 10, low=min(o, c) - 10, close=c, volume=Decimal(3), buy_volume=Decimal(2 if up else 1),
                  sell_volume=Decimal(1 if up else 2), closed=closed)


async def test_gui_draws_history_and_live_candles_under_xvfb(redis_url, redis, tmp_path):
    runner = xvfb_run()
    bus = Bus(redis)
    for i in range(30):
        await bus.publish(streams.candles(EX, SYM, TF), candle(i).encode())
    server_redis = connect(redis_url)
    api = ApiApp(Settings(port=0, shutdown_grace_s=1), server_redis)
    stop = asyncio.Event()
    task = asyncio.create_task(api.run(stop))
    await asyncio.wait_for(api.started.wait(), 10)
    shot, summary = tmp_path / "gui.png", tmp_path / "gui.json"
    proc = await asyncio.create_subprocess_exec(
        runner, "-a", "-s", "-screen 0 1024x768x24", sys.executable, "-m", "sentinel.gui",
        "--series", f"{EX}|{SYM}|{TF}", "--redis-url", redis_url, "--api", api.url, "--duration", "4",
        "--screenshot", str(shot), "--summary", str(summary),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await asyncio.sleep(2.0)  # history loaded and subscribed by then (the sends repeat below anyway)
        alert = Alert(id="gui-a", rule="gui_rule", exchange=EX, symbol=SYM, timeframe=TF, ts=candle(30).ts,
                      fired_at=candle(31).ts, price=Decimal("61234.5"))
        for _ in range(5):
            for i in (30, 31):
                await bus.publish(streams.candles(EX, SYM, TF), candle(i).encode(),
                                  channel=streams.channel_candles(EX, SYM, TF))
            await bus.publish(streams.ALERTS, alert.encode(), channel=streams.CHANNEL_ALERTS)
            await asyncio.sleep(0.2)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await server_redis.aclose()
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    drawn = json.loads(summary.read_text())
    assert drawn["bars"] == 32  # 30 from the API's history + 2 live from the channel
    assert drawn["closes"] == [str(candle(i).close) for i in range(32)]
    assert "gui-a" in drawn["alerts"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / "gui.png")
    width, height, channels, pixels = read_png(shot)
    assert (width, height) >= (800, 600)
    # one stroke per candle of each colour (DearPyGui 2.3.1 draws bodies a few pixels wide whatever `weight` says)
    ups = sum(1 for i in range(32) if candle(i).close >= candle(i).open)
    assert is_bull(*BULL[:3]) and is_bear(*BEAR[:3]) and not is_bull(*BEAR[:3])
    assert ups - 3 <= strokes(pixels, width, height, channels, is_bull) <= ups
    assert (32 - ups) - 3 <= strokes(pixels, width, height, channels, is_bear) <= 32 - ups
