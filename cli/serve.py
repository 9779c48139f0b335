"""`village serve`: the API with uvicorn workers; `village users`: the accounts that sign in to it."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session, select

from cli.registry import err_console, fail, registry_engine
from core.settings import get_settings

users_app = typer.Typer(no_args_is_help=True, help="API users (dashboard and admin API sign-in) and their API keys.")


def default_workers() -> int:
    """One worker per core: the trace lookups are CPU-bound once cached."""
    return max(1, os.cpu_count() or 1)


def serve(
    host: str | None = typer.Option(None, "--host", help="Listen address (default API_HOST)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Listen port (default API_PORT)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Worker processes (0: one per core)."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log every request (paths only)."),
    forwarded_allow_ips: str | None = typer.Option(
        None,
        "--forwarded-allow-ips",
        help="Reverse proxies (IPs or networks, comma-separated) whose X-Forwarded-For/Proto to trust, "
        "e.g. 10.0.0.5; overrides API_TRUSTED_PROXIES. '*' is refused.",
    ),
) -> None:
    """Run the API: public trace pages and JSON, dashboard, registry admin (uvicorn)."""
    import uvicorn
    from pydantic import ValidationError

    from api.security import SecretError, jwt_secret

    if forwarded_allow_ips is not None:  # the workers read their settings from the environment
        os.environ["API_TRUSTED_PROXIES"] = forwarded_allow_ips
        get_settings.cache_clear()
    try:
        settings = get_settings()
    except ValidationError as e:
        fail("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()), 2)
    try:
        jwt_secret(settings)  # refuse to start without a usable secret (and make it once, before the workers)
    except SecretError as e:
        fail(str(e), 2)
    registry_engine()  # migrate first, once, before the workers start
    host = host or settings.api_host
    port = port or settings.api_port
    workers = workers or default_workers()
    err_console.print(
        f"API on http://{host}:{port} ({workers} worker{'s' if workers > 1 else ''}); docs at /api/v1/docs"
    )
    uvicorn.run(
        "api.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        log_level=settings.log_level.lower(),
        proxy_headers=False,  # the app reads them, for API_TRUSTED_PROXIES only (api/headers.py)
        server_header=False,
        # a worker still importing on a busy machine is not hung: uvicorn's 5 s kills it, again and again
        timeout_worker_healthcheck=60,
    )


def _password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        value = sys.stdin.readline().rstrip("\n")
    else:
        value = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not value:
        fail("no password given", 2)
    return value


@users_app.command("add")
def add(
    username: str = typer.Argument(..., help="Sign-in name."),
    role: str = typer.Option(
        ...,
        "--role",
        help="county_admin | township_officer | village_operator | analyst | city_officer | province_officer.",
    ),
    scope: str = typer.Option(
        ...,
        "--scope",
        help="Division code the role covers: province 210000, city 211100, county 6 digits, township 9, village 12.",
    ),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    update: bool = typer.Option(False, "--update", help="Change an existing user (password, role, scope)."),
) -> None:
    """Add a user; the password is prompted for (or read from stdin), never taken as an argument."""
    from api.models import Role
    from api.users import UserError, add_user

    if role not in Role.__members__:
        fail(f"unknown role {role!r}; one of {', '.join(Role.__members__)}", 2)
    password = _password(password_stdin)
    with Session(registry_engine()) as session:
        try:
            user = add_user(session, username, password, role, scope, update=update)
        except (UserError, ValueError) as e:
            fail(str(e), 2)
        session.commit()
        typer.echo(f"user {user.username}: {user.role} of {user.scope}")


@users_app.command("list")
def list_users() -> None:
    """The users with role, scope and state."""
    from api.models import User

    with Session(registry_engine()) as session:
        rows = session.exec(select(User).order_by(User.username)).all()
    table = Table(title=f"API users ({len(rows)})")
    for c in ("user", "role", "scope", "active", "created"):
        table.add_column(c)
    for u in rows:
        table.add_row(u.username, str(u.role), u.scope, "yes" if u.active else "no", u.created_at.isoformat()[:16])
    Console().print(table)


@users_app.command("disable")
def disable(username: str = typer.Argument(...)) -> None:
    """Disable a user: their tokens and API keys stop working at once."""
    from api.models import User

    with Session(registry_engine()) as session:
        user = session.exec(select(User).where(User.username == username)).first()
        if user is None:
            fail(f"no user {username!r}", 1)
        user.active = False
        session.add(user)
        session.commit()
    typer.echo(f"user {username} disabled")


@users_app.command("key")
def key(
    username: str = typer.Argument(..., help="The user the key acts as."),
    name: str = typer.Option(..., "--name", help="What the key is for."),
) -> None:
    """Make an API key for a user's machine; printed once (only its hash is kept)."""
    from api.models import ApiKey, User
    from api.security import new_api_key

    with Session(registry_engine()) as session:
        user = session.exec(select(User).where(User.username == username)).first()
        if user is None or user.id is None:
            fail(f"no user {username!r}", 1)
        value, prefix, digest = new_api_key()
        session.add(ApiKey(prefix=prefix, key_hash=digest, name=name, user_id=user.id))
        session.commit()
    err_console.print(f"API key {prefix} for {username} ({name}); send it as X-API-Key. It is not shown again:")
    typer.echo(value)
