"""The HTTP transport's bearer-token check: one shared secret, compared in constant time.

Owns only the comparison. FastMCP's auth plumbing does the rest once `BearerToken` is passed
as ``FastMCP(auth=...)``: its middleware reads ``Authorization: Bearer …`` and the /mcp
route answers 401 with ``WWW-Authenticate: Bearer`` when `verify_token` returns None. A
plain `TokenVerifier` adds no routes (no OAuth metadata), so plain bearer clients just work.

The secret is kept as bytes on this object only: not in the `AccessToken` FastMCP keeps
per request, not in a repr, not in any log line or error message.
"""

from __future__ import annotations

import hmac
import re

from fastmcp.server.auth import AccessToken, TokenVerifier

from interp.config import TOKEN_PATTERN

#: The client id every request authenticated by the shared token gets.
CLIENT_ID = "interp-bearer"


def valid_token(token: str) -> bool:
    """Whether ``token`` can be sent in an ``Authorization`` header unchanged."""
    return re.fullmatch(TOKEN_PATTERN, token) is not None


class BearerToken(TokenVerifier):
    """Accept exactly one token, given at start-up (``--token``, ``INTERP_TOKEN`` or generated)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        if not valid_token(token):
            # The message names the rule, never the value.
            raise ValueError("a bearer token must be printable ASCII without spaces")
        self._expected = token.encode("ascii")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    async def verify_token(self, token: str) -> AccessToken | None:
        # Header values arrive latin-1 decoded; encoding them back gives the bytes that were
        # sent. compare_digest's time depends on the length only, not on where they differ.
        if not hmac.compare_digest(token.encode("latin-1", "replace"), self._expected):
            return None
        # AccessToken.token is required, but FastMCP keeps this object for the whole request
        # (scope["user"], the auth context var): a fixed label instead of the secret means
        # nothing downstream can log it. There is one secret, so the label loses nothing.
        return AccessToken(token=CLIENT_ID, client_id=CLIENT_ID, scopes=[], expires_at=None)
