"""Passwords, access tokens and API keys, with the standard library and PyJWT only.

- Passwords: scrypt (memory-hard, in hashlib) with a random salt, stored as
  `scrypt$n$r$p$salt$hash` (base64), compared in constant time.
- Access tokens: JWT (HS256) carrying the user name, role and scope, valid API_TOKEN_TTL_S.
  The signing secret is API_JWT_SECRET, or the file API_JWT_SECRET_FILE, or else a secret
  generated once under VILLAGE_DATA_DIR/secrets so that every worker of the machine shares it
  (written to a temporary file and linked into place, so no worker ever reads a partial one).
  A secret under 32 bytes (RFC 7518 asks for at least the hash size for HS256) refuses to start.
  It is never logged.
- API keys: `vk_{prefix}.{secret}` with 256 random bits; only the SHA-256 of the whole key is kept
  (a fast hash is enough for a key nobody can guess), looked up by its prefix.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

from core.settings import Settings

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
JWT_ALGORITHM = "HS256"
JWT_AUDIENCE = "village-api"
KEY_PREFIX = "vk_"


class TokenError(ValueError):
    """A token that is malformed, expired or not signed by us."""


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


# A hash to compare against when the user does not exist, so that timing does not tell names apart.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


MIN_SECRET_BYTES = 32


class SecretError(RuntimeError):
    """A token signing secret that is missing, unreadable or too short to start with."""


def _checked(secret: str, where: str) -> str:
    size = len(secret.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        what = "empty" if size == 0 else f"{size} bytes long"
        raise SecretError(
            f"the token signing secret ({where}) is {what}: it must have at least {MIN_SECRET_BYTES} bytes; "
            "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )
    return secret


def _create_secret_file(path: Path) -> None:
    """Write a new secret to `path` atomically: complete and 0600 before anyone can open it, and
    never over a secret another worker made first (a hard link does not replace an existing file)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".api_jwt_secret.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(48))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another worker made it first: theirs is the one
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def jwt_secret(settings: Settings) -> str:
    """The token signing secret: setting, file, or one generated under data_dir (mode 0600).

    SecretError (with what to do) when the secret is empty, shorter than 32 bytes or unreadable."""
    if settings.api_jwt_secret.get_secret_value():
        return _checked(settings.api_jwt_secret.get_secret_value(), "API_JWT_SECRET")
    if settings.api_jwt_secret_file is not None:
        where = f"API_JWT_SECRET_FILE {settings.api_jwt_secret_file}"
        try:
            text = Path(settings.api_jwt_secret_file).read_text(encoding="utf-8")
        except OSError as e:
            raise SecretError(f"cannot read the token signing secret ({where}): {e.strerror}") from None
        return _checked(text.strip(), where)
    path = settings.data_dir / "secrets" / "api_jwt_secret"
    if not path.exists():
        _create_secret_file(path)
    return _checked(path.read_text(encoding="utf-8").strip(), f"{path}; delete it to have a new one made")


def create_token(secret: str, username: str, role: str, scope: str, ttl_s: int) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": username,
        "role": role,
        "scope_code": scope,
        "aud": JWT_AUDIENCE,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_s),
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def decode_token(secret: str, token: str) -> dict[str, Any]:
    try:
        return jwt.decode(
            token, secret, algorithms=[JWT_ALGORITHM], audience=JWT_AUDIENCE, options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the access token has expired: sign in again") from None
    except jwt.PyJWTError:  # the library's reason stays here: a token is either ours and valid, or not
        raise TokenError("invalid access token: sign in again") from None


def new_api_key() -> tuple[str, str, str]:
    """(full key shown once, its prefix, the hash to store)."""
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}.{secrets.token_urlsafe(32)}"
    return key, prefix, hash_api_key(key)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_prefix(key: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    if not key.startswith(KEY_PREFIX) or "." not in key:
        return None
    return key[len(KEY_PREFIX) :].split(".", 1)[0] or None
