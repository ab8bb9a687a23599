"""``sentinel rules check RULES [--config SETTINGS]``: what the engine would say of a rules file, before deploying."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from shared.errors import ConfigError
from shared.rules import check_rules, describe, load_rules_file

rules_app = typer.Typer(help="Alert rules: check a rules file.", no_args_is_help=True, add_completion=False)


@rules_app.callback()
def _group() -> None:
    """Alert rules."""


def _notifier_channels(config: Path) -> list[str]:
    """The channel names the notifier of settings file ``config`` delivers to: its ``channels`` and the built-ins."""
    from services.notifier.core import BUILTIN_CHANNELS
    from services.notifier.settings import Settings as NotifierSettings

    return [*NotifierSettings.load(config).channels, *BUILTIN_CHANNELS]


@rules_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="Rules YAML file.")],
    config: Annotated[Optional[Path], typer.Option(  # noqa: UP045 (typer reads the annotation)
        "--config", help="Settings file: also check that every channel a rule names is one its notifier defines.")]
        = None,
) -> None:
    """Validate FILE: print every problem as file:line: field.path — expected (exit code 1), or the rules."""
    problems: list[str] = []
    channels = None
    if config is not None:
        try:
            channels = _notifier_channels(config)
        except ConfigError as exc:
            problems += exc.problems
    problems += check_rules(file, channels, str(config))
    if problems:
        for problem in problems:
            typer.echo(problem, err=True)
        typer.echo(f"{file}: {len(problems)} problem(s); the file is refused", err=True)
        raise typer.Exit(1)
    ruleset = load_rules_file(file)
    for rule in ruleset.rules:
        flag = "" if rule.enabled else " (disabled)"
        typer.echo(f"{rule.name}{flag}: {', '.join(rule.symbols)} {rule.timeframe} {describe(rule.condition)} "
                   f"[{rule.frequency}]")
    typer.echo(f"{file}: OK, {len(ruleset.rules)} rule(s)")
