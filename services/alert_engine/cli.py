"""``sentinel rules ...``: check a rules file (the lead mounts ``rules_app`` on the main CLI)."""

from __future__ import annotations

from pathlib import Path

import typer

from shared.errors import ConfigError
from shared.rules import describe, load_rules_file

rules_app = typer.Typer(help="Alert rules: check a rules file.", no_args_is_help=True, add_completion=False)


@rules_app.callback()
def _group() -> None:
    """Alert rules."""


@rules_app.command("check")
def check(file: Path = typer.Argument(..., help="Rules YAML file.")) -> None:
    """Validate FILE: print every problem as file:line: field.path — expected (exit code 1), or the rules."""
    try:
        ruleset = load_rules_file(file)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        typer.echo(f"{file}: {len(exc.problems)} problem(s); the file is refused", err=True)
        raise typer.Exit(1) from exc
    for rule in ruleset.rules:
        flag = "" if rule.enabled else " (disabled)"
        typer.echo(f"{rule.name}{flag}: {', '.join(rule.symbols)} {rule.timeframe} {describe(rule.condition)} "
                   f"[{rule.frequency}]")
    typer.echo(f"{file}: OK, {len(ruleset.rules)} rule(s)")
