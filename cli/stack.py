"""`village stack` commands (being written)."""

import typer

app = typer.Typer(no_args_is_help=True)


def up() -> None:
    """Run the local stack until Ctrl-C."""
    raise typer.Exit(1)


def demo() -> None:
    """Run the demo."""
    raise typer.Exit(1)
