"""``python -m services.exchange_sim``: the local exchange (see ``cli.exchange_sim_command``)."""

from __future__ import annotations

import typer

from services.exchange_sim.cli import exchange_sim_command


def main() -> None:
    typer.run(exchange_sim_command)


if __name__ == "__main__":
    main()
