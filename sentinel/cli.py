"""The ``sentinel`` command."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from redis.exceptions import RedisError

from shared.errors import SentinelError

app = typer.Typer(help="sentinel: real-time crypto market alerts over Redis Streams.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file (or SENTINEL_CONFIG).")]

SERVICES = {
    "market-feed": "services.market_feed.__main__",
    "candle-builder": "services.candle_builder.__main__",
    "alert-engine": "services.alert_engine.__main__",
    "notifier": "services.notifier.__main__",
    "api": "services.api.__main__",
}


def _service_command(module: str, name: str):
    def command(config: ConfigOpt = None) -> None:
        importlib.import_module(module).main(str(config) if config else None)

    command.__doc__ = f"Run the {name} service alone (what docker-compose runs). REDIS_URL selects the Redis."
    return command


DEBUG_ENV = "SENTINEL_DEBUG"


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", envvar=DEBUG_ENV, help="Show the traceback of an error "
                                              "(anywhere on the command line).")] = False) -> None:
    """sentinel: real-time crypto market alerts over Redis Streams."""


for _name, _module in SERVICES.items():
    app.command(_name)(_service_command(_module, _name))


@app.command()
def up(config: ConfigOpt = None) -> None:
    """Run every service and the API together; starts an embedded Redis when REDIS_URL is not set."""
    from sentinel.run import up as run_up

    run_up(config)


@app.command()
def demo(
    trades: Annotated[Optional[Path], typer.Option(help="A recorded trades CSV instead of the simulated market.")] = None,
    rules: Annotated[Optional[Path], typer.Option(help="Rules YAML (default: the sample rules).")] = None,
    exchange: Annotated[Optional[str], typer.Option(help="Exchange id of the recording.")] = None,
    symbol: Annotated[Optional[str], typer.Option(help="Symbol of the recording, e.g. BTC/USDT.")] = None,
    minutes: Annotated[Optional[int], typer.Option(help="Minutes of simulated market [default: 30 --live, 180 --direct].")] = None,
    live: Annotated[bool, typer.Option("--live/--direct", help="--live (default): the true live path, the simulated "
                                       "market served by a local exchange speaking Binance's protocol and read by "
                                       "ccxt.pro; --direct: publish the simulation straight into the trades stream.")] = True,
    speed: Annotated[float, typer.Option(help="--live: simulated time runs this many times faster than real time.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Seed of the simulated market.")] = 7,
    data_dir: Annotated[Optional[Path], typer.Option(help="Keep Redis data and alerts.jsonl here.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the whole pipeline offline on a simulated market (or a recording) and print what it made."""
    from sentinel.run import RunOptions
    from sentinel.run import demo as run_demo

    live = live and trades is None  # a recording is replayed directly
    minutes = minutes or (30 if live else 180)
    run_demo(RunOptions(trades_file=trades, rules_file=rules, exchange=exchange, symbol=symbol, minutes=minutes,
                        seed=seed, data_dir=data_dir, config_file=config, live=live, live_speed=speed))


@app.command()
def backtest(
    inputs: Annotated[list[Path], typer.Argument(help="Trades files (CSV, .csv.gz, Binance .zip archives) or folders of "
                                                 "them; a CSV may hold many symbols in a symbol column.",
                                                 show_default=False)],
    rules: Annotated[Path, typer.Option(help="Rules YAML to test.")],
    out: Annotated[Path, typer.Option(help="Directory for candles_*.csv, alerts.jsonl and report.html.")],
    exchange: Annotated[Optional[str], typer.Option(help="Exchange id of every input (default: from the path, "
                                                    "else binance).")] = None,
    symbol: Annotated[Optional[str], typer.Option(help="Symbol of single-symbol files, e.g. BTC/USDT (default: from "
                                                  "the file name).")] = None,
    timeframes: Annotated[Optional[str], typer.Option(help="Comma-separated timeframes, e.g. 1m,5m,1h (the rules' "
                                                      "own are always built).")] = None,
    forward_bars: Annotated[int, typer.Option(help="Report: return after this many bars of each rule's "
                                              "timeframe.")] = 10,
    keep_partial_alerts: Annotated[bool, typer.Option(help="Also write the bar-close alerts of bars the data does "
                                                      "not cover from start to end (a live run fires them).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Replay recordings of one or many symbols and exchanges through the real services as fast as possible; write
    candles, alerts (time order) and report.html, and say why a rule fired nothing."""
    from sentinel.backtest.run import BacktestOptions
    from sentinel.backtest.run import backtest as run_backtest

    tfs = [t.strip() for t in timeframes.split(",") if t.strip()] if timeframes else None
    run_backtest(BacktestOptions(inputs=inputs, rules_file=rules, out_dir=out, exchange=exchange, symbol=symbol,
                                 timeframes=tfs, config_file=config, forward_bars=forward_bars,
                                 keep_partial_alerts=keep_partial_alerts))


def _mount_optional() -> None:
    """Sub-commands that live with their service. Not when the command line asks for one of this module's own
    commands (``sentinel backtest …``): importing them all (the exchange simulator, the GUI's pandas, aiohttp) took
    ~1 s of every such run."""
    asked = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if asked in ("up", "demo", "backtest") and "--help" not in sys.argv:
        return
    mounts = [("sentinel.rules_cli", "rules_app", "rules", "Check and manage alert rules."),
              ("services.notifier.cli", "notify_app", "notify", "Test channels, list and retry dead letters."),
              ("sentinel.data.cli", "data_app", "data", "Download trade history for backtests.")]
    for module, attr, name, help_text in mounts:
        try:
            sub = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        app.add_typer(sub, name=name, help=help_text)
    commands = [("services.exchange_sim.cli", "exchange_sim_command", "exchange-sim"),
                ("sentinel.watch", "watch_command", "watch"), ("sentinel.gui", "gui_command", "gui"),
                ("sentinel.report.cli", "report_command", "report")]
    for module, attr, name in commands:
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        app.command(name)(fn)


_mount_optional()


def _say(message: str, hint: str = "") -> None:
    lines = message.strip().splitlines() or ["(no message)"]
    typer.secho(f"error: {lines[0]}", fg=typer.colors.RED, err=True)
    for line in lines[1:]:
        typer.secho(f"       {line}", fg=typer.colors.RED, err=True)
    if hint:
        typer.echo(hint, err=True)


def _os_error(exc: OSError) -> str:
    """An OSError as a person reads it: what, which file, why (``[Errno 13]`` and the like left out)."""
    where = f" {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{':' if where else ''}{where}"


def main() -> None:
    """The ``sentinel`` entry point: a user's mistake ends in one or a few lines naming the cause, never a
    traceback; ``--debug`` (anywhere on the command line) or SENTINEL_DEBUG=1 shows the traceback too."""
    debug = "--debug" in sys.argv[1:] or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    sys.argv[1:] = [a for a in sys.argv[1:] if a != "--debug"]
    try:
        app()
        return
    except SentinelError as exc:
        _say(str(exc))
        failure, code = exc, 2
    except KeyboardInterrupt as exc:
        typer.echo("interrupted", err=True)
        failure, code = exc, 130
    except OSError as exc:  # a file or directory that cannot be read or written, a port, a socket
        _say(_os_error(exc))
        failure, code = exc, 1
    except RedisError as exc:  # a Redis that is not there (watch, gui, notify with a wrong REDIS_URL)
        _say(f"Redis: {exc}", "is sentinel running, and do REDIS_URL / --redis-url (or data_dir) point at its Redis?")
        failure, code = exc, 1
    except Exception as exc:  # a bug: say so, briefly; the traceback is one flag away
        _say(f"unexpected {type(exc).__name__}: {exc}", "this is a bug in sentinel: run again with --debug and "
             "report the traceback")
        failure, code = exc, 1
    if debug:
        traceback.print_exception(failure, file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
