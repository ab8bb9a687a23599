"""``sentinel notify``: test a channel, list recent deliveries, list and retry dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from services.notifier import core
from services.notifier.settings import Settings
from shared.embedded_redis import running_url
from shared.errors import NotifyError, RedisUnavailableError, SentinelError
from shared.logs import redact
from shared.runtime import connect, redis_url_or_embedded
from shared.schemas import Alert

notify_app = typer.Typer(no_args_is_help=True, add_completion=False)
dead_app = typer.Typer(no_args_is_help=True, help="List or retry dead-lettered notifications.")
notify_app.add_typer(dead_app, name="dead-letters")
console = Console()

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file (or SENTINEL_CONFIG).")]


def _settings(config: Path | None) -> Settings:
    try:
        return Settings.load(str(config) if config else None)
    except SentinelError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def test_alert(now_ms: int) -> Alert:
    return Alert(id=f"test-{now_ms}", rule="sentinel-test", exchange="sentinel", symbol="TEST/USDT", timeframe="1m",
                 ts=now_ms, fired_at=now_ms, price=None, message="Test notification from sentinel", severity="info")


async def send_test(settings: Settings, channel: str) -> tuple[bool, str]:
    """Send one test message to ``channel`` (one attempt). Returns (ok, outcome text with secrets redacted)."""
    from services.notifier.targets import build_targets

    targets = build_targets(settings)
    if channel not in targets:
        return False, f"unknown channel {channel!r}; configured: {', '.join(sorted(targets)) or 'none'}"
    target = targets[channel]
    alert = test_alert(int(time.time() * 1000))
    started = time.monotonic()
    try:
        await asyncio.wait_for(target.send(core.render(target.format, [alert]), [alert]), settings.timeout_s + 1)
    except NotifyError as exc:
        return False, f"{channel} ({target.shown_url}): FAILED — {redact(str(exc))}"
    except (TimeoutError, OSError) as exc:
        return False, f"{channel} ({target.shown_url}): FAILED — {type(exc).__name__}"
    finally:
        await target.close()
    return True, f"{channel} ({target.shown_url}): delivered in {time.monotonic() - started:.2f}s"


@notify_app.command("test")
def test_command(channel: str, config: ConfigOpt = None) -> None:
    """Send a test message to CHANNEL and print the outcome (exit 1 on failure)."""
    settings = _settings(config)
    try:
        ok, text = asyncio.run(send_test(settings, channel))
    except SentinelError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"[green]{text}[/green]" if ok else f"[red]{text}[/red]", highlight=False)
    if not ok:
        raise typer.Exit(1)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def instance_redis(settings: Settings) -> contextlib.AbstractContextManager[str]:
    """The Redis of the sentinel these commands are about: ``REDIS_URL``; else the embedded redis-server of a
    running ``sentinel up`` in ``data_dir`` (never a second server on its live files); else, for a stopped instance,
    an embedded server started on its data; SentinelError when ``data_dir`` holds no sentinel data at all."""
    if settings.redis_url:
        return contextlib.nullcontext(settings.redis_url)
    data = Path(settings.data_dir) / "redis"
    running = running_url(data)
    if running:
        return contextlib.nullcontext(running)
    if not data.is_dir() or not any(data.glob("appendonly*")):
        raise RedisUnavailableError(
            f"no running sentinel found: REDIS_URL is not set and {data} holds no sentinel data (run this where "
            "`sentinel up` runs, give --config with its data_dir, or set REDIS_URL to its Redis)")
    console.print(f"[dim]no sentinel running on {data}: reading its stored data with a temporary redis-server[/dim]")
    return redis_url_or_embedded(None, settings.data_dir)


async def _with_redis(settings: Settings, fn):
    with instance_redis(settings) as url:
        redis = connect(url, cluster=settings.redis_cluster)
        try:
            return await fn(redis)
        finally:
            await redis.aclose()


@notify_app.command("deliveries")
def deliveries_command(limit: int = 20, config: ConfigOpt = None) -> None:
    """List recent deliveries (newest first)."""
    from shared.notify_history import recent_deliveries

    settings = _settings(config)
    rows = asyncio.run(_with_redis(settings, lambda r: recent_deliveries(r, limit)))
    table = Table("time", "target", "status", "alerts", "attempts", "reason")
    for row in rows:
        table.add_row(_when(row["ts"]), row["target"], row["status"], str(row["count"]), str(row["attempts"]),
                      row["reason"])
    console.print(table)


@dead_app.command("list")
def dead_list_command(limit: int = 50, config: ConfigOpt = None) -> None:
    """List dead letters (newest first)."""
    from shared.notify_history import dead_letters

    settings = _settings(config)
    rows = asyncio.run(_with_redis(settings, lambda r: dead_letters(r, limit)))
    table = Table("id", "time", "alert", "target", "attempts", "reason")
    for row in rows:
        table.add_row(row["id"], _when(row["ts"]), row["alert_id"], row["target"], str(row["attempts"]),
                      row["reason"])
    console.print(table)
    console.print(f"{len(rows)} dead letter(s)")


@dead_app.command("retry")
def dead_retry_command(ids: Annotated[Optional[list[str]], typer.Argument(help="Entry ids; none = all.")] = None,
                       config: ConfigOpt = None) -> None:
    """Send dead letters again (all, or the given entry ids). Exit 1 if any failed again."""
    from services.notifier.app import NotifierApp
    from shared.notify_history import retry_dead_letters

    settings = _settings(config)

    async def retry(redis):
        app = NotifierApp(settings, redis)
        try:
            return await retry_dead_letters(app, ids or None)
        finally:
            for target in app.targets.values():
                await target.close()

    try:
        results = asyncio.run(_with_redis(settings, retry))
    except SentinelError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    for row in results:
        colour = "green" if row["status"] == "delivered" else "red"
        console.print(f"[{colour}]{row['id']} {row['alert_id']} → {row['target']}: {row['status']}[/{colour}]",
                      highlight=False)
    console.print(f"{len(results)} retried")
    if any(r["status"] != "delivered" for r in results):
        raise typer.Exit(1)
