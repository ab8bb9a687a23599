"""``sentinel data ...``: trade history for backtests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from sentinel.data.archives import DEFAULT_BASE_URL
from sentinel.data.fetch import FetchRequest, fetch
from sentinel.data.plan import parse_day

data_app = typer.Typer(no_args_is_help=True, add_completion=False)


@data_app.command("fetch")
def fetch_command(
    exchange: Annotated[str, typer.Argument(help="ccxt exchange id: binance (public-data archives), binanceusdm, "
                                                 "kraken, ... (REST trade history)")],
    symbols: Annotated[list[str], typer.Argument(help="Symbols, e.g. BTCUSDT ETHUSDT or BTC/USD.")],
    start: Annotated[str, typer.Option("--from", help="First UTC day, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--to", help="Last UTC day, YYYY-MM-DD (included).")],
    folder: Annotated[Path, typer.Option("--dir", help="Folder for the CSVs (one per symbol and day, in "
                                                       "DIR/<exchange>/).")] = Path("history"),
    market: Annotated[str, typer.Option(help="Binance archives: spot or usdm (USD-M futures).")] = "spot",
    source: Annotated[str, typer.Option(help="auto (archives for Binance, REST elsewhere), archive or rest.")] = "auto",
    base_url: Annotated[str, typer.Option(help="Base URL of Binance's public-data archives (a mirror).",
                                          envvar="SENTINEL_BINANCE_DATA_URL")] = DEFAULT_BASE_URL,
    rest_url: Annotated[Optional[str], typer.Option(help="REST base URL instead of the exchange's own (a mirror, "
                                                         "a proxy, `sentinel exchange-sim`).")] = None,
    keep_archives: Annotated[bool, typer.Option(help="Keep the verified zips in DIR/archives/.")] = False,
) -> None:
    """Download trades for `sentinel backtest`: Binance's verified public archives, or any exchange's REST history.
    Resumable: run it again after an interruption and it continues where it stopped."""
    console = Console(stderr=True)
    req = FetchRequest(exchange=exchange.lower(), symbols=symbols, start=parse_day(start, "--from"),
                       end=parse_day(end, "--to"), root=folder, market=market, source=source, base_url=base_url,
                       rest_url=rest_url, keep_archives=keep_archives)
    result = fetch(req, console)
    mb = result.bytes_downloaded / 1e6
    console.print(f"wrote {len(result.written)} file(s), {result.trades:,} trades"
                  + (f", {mb:,.1f} MB downloaded" if result.bytes_downloaded else "")
                  + (f"; {len(result.already)} day(s) already there" if result.already else ""), highlight=False)
    for path in result.written:
        typer.echo(str(path))
    for line in result.notes:
        console.print(f"[yellow]note:[/] {line}", highlight=False)
    for line in result.missing:
        console.print(f"[yellow]missing:[/] {line}", highlight=False)
    for line in result.failed:
        console.print(f"[red]error:[/] {line}", highlight=False)
    if not result.ok:
        raise typer.Exit(1)
