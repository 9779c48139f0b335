"""`village simulate` commands (being written)."""

import typer

app = typer.Typer(no_args_is_help=True)


def simulate() -> None:
    """Run device simulators."""
    raise typer.Exit(1)
