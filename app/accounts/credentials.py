"""Secrets users hold: passwords (argon2id hashes) and random tokens (API tokens, session ids, one-time
sign-in links), of which only a SHA-256 digest is stored. Must not import torch or `workers`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
API_TOKEN_PREFIX = "tb_"
MIN_PASSWORD_LENGTH = 10


def hash_password(password: str) -> str:
    """An argon2id hash of the password, with its salt and parameters."""
    return _hasher.hash(password)


@cache
def _stand_in_hash() -> str:
    """A hash of a random secret, with the same parameters as real ones, that nothing can match."""
    return _hasher.hash(secrets.token_urlsafe(32))


def password_matches(password: str, stored_hash: str | None) -> bool:
    """Whether the password fits the stored hash. An unknown account or one without a password (None) costs the
    same one argon2 verification, against a stand-in hash, so timing does not tell which accounts exist."""
    try:
        return _hasher.verify(stored_hash or _stand_in_hash(), password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"use at least {MIN_PASSWORD_LENGTH} characters"
    return None


def new_token(prefix: str = "") -> str:
    """A random token with 256 bits of entropy, URL-safe."""
    return prefix + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """The SHA-256 hex digest stored in place of a token (tokens are random, so no slow hash is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(a.encode(), b.encode())
