"""`village ingest` commands (being written)."""

import typer

app = typer.Typer(no_args_is_help=True)


def ingest() -> None:
    """Run the ingest service."""
    raise typer.Exit(1)
