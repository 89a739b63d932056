"""Bearer-token access to every ``/v1`` route.

Tokens come from the replica's environment: ``$BRAINDINO_SERVE_TOKEN``, and/or one token per line of the
file ``$BRAINDINO_SERVE_TOKEN_FILE`` names (a mounted secret, re-read on every request, so a token is
rotated by adding the new line, moving clients, then removing the old one). A presented token is
compared with each accepted one in constant time.
"""

from __future__ import annotations

import hmac
import os

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.errors import ApiError

TOKEN_ENV = "BRAINDINO_SERVE_TOKEN"
TOKEN_FILE_ENV = "BRAINDINO_SERVE_TOKEN_FILE"
REALM = 'Bearer realm="braindino"'


class NoTokenConfigured(RuntimeError):
    """The ingress has no token to accept: it refuses to start rather than serve without access control."""


def configured_tokens() -> list[str]:
    tokens = [os.environ[TOKEN_ENV].strip()] if os.environ.get(TOKEN_ENV, "").strip() else []
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as stream:
                tokens += [line.strip() for line in stream if line.strip()]
        except OSError as err:
            raise NoTokenConfigured(f"${TOKEN_FILE_ENV}={path} cannot be read ({err.strerror}); mount the token secret there") from None
    return tokens


def require_tokens() -> None:
    """Raise ``NoTokenConfigured`` unless at least one token is configured."""
    if not configured_tokens():
        raise NoTokenConfigured(f"no API token: set ${TOKEN_ENV} or point ${TOKEN_FILE_ENV} at a file holding one "
                                "in the environment of the Serve replicas")


def token_accepted(presented: str, accepted: list[str]) -> bool:
    """Whether ``presented`` equals one of ``accepted``; every candidate is compared, each in constant time."""
    found = False
    for token in accepted:
        found |= hmac.compare_digest(presented.encode(), token.encode())
    return found


async def bearer_token(credentials: HTTPAuthorizationCredentials | None = Depends(HTTPBearer(auto_error=False))) -> None:
    """FastAPI dependency: 401 with ``WWW-Authenticate`` unless the request carries an accepted bearer token."""
    if credentials is None:
        raise ApiError(401, "missing_token", "send 'Authorization: Bearer <token>'", {"WWW-Authenticate": REALM})
    try:
        accepted = configured_tokens()
    except NoTokenConfigured as err:
        raise ApiError(503, "no_token_configured", str(err)) from None
    if not token_accepted(credentials.credentials, accepted):
        raise ApiError(401, "invalid_token", "the bearer token is not accepted",
                       {"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
