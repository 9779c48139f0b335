"""Passwords, access tokens and API keys, with the standard library and PyJWT only.

- Passwords: scrypt (memory-hard, in hashlib) with a random salt, stored as
  `scrypt$n$r$p$salt$hash` (base64), compared in constant time.
- Access tokens: JWT (HS256) carrying the user name, role and scope, valid API_TOKEN_TTL_S.
  The signing secret is API_JWT_SECRET, or the file API_JWT_SECRET_FILE, or else a secret
  generated once under VILLAGE_DATA_DIR/secrets so that every worker of the machine shares it.
  It is never logged.
- API keys: `vk_{prefix}.{secret}` with 256 random bits; only the SHA-256 of the whole key is kept
  (a fast hash is enough for a key nobody can guess), looked up by its prefix.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
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


def jwt_secret(settings: Settings) -> str:
    """The token signing secret: setting, file, or one generated under data_dir (mode 0600)."""
    if settings.api_jwt_secret.get_secret_value():
        return settings.api_jwt_secret.get_secret_value()
    if settings.api_jwt_secret_file is not None:
        return Path(settings.api_jwt_secret_file).read_text(encoding="utf-8").strip()
    path = settings.data_dir / "secrets" / "api_jwt_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker made it first
            return path.read_text(encoding="utf-8").strip()
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text(encoding="utf-8").strip()


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
    except jwt.PyJWTError as e:
        raise TokenError(f"invalid access token: {e}") from None


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
