"""The tcp store's peer authentication: an HMAC-SHA256 challenge under a shared token.

At connect the server sends a random nonce (``Challenge``); a client that holds
the token answers ``hmac_answer(token, nonce)`` (``Hello``); the server checks
it with :func:`check_answer` before it serves anything. The token itself never
crosses the wire. Both ends import this module; neither imports the other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["check_answer", "hmac_answer", "new_nonce"]


def new_nonce() -> str:
    """A fresh random challenge (128 bits, hex)."""
    return secrets.token_hex(16)


def hmac_answer(token: str, nonce: str) -> str:
    """The client's answer to a challenge: hex HMAC-SHA256 of the nonce under the token."""
    return hmac.new(token.encode(), nonce.encode(), hashlib.sha256).hexdigest()


def check_answer(token: str, nonce: str, answer: str) -> bool:
    """True if ``answer`` is :func:`hmac_answer` of ``nonce`` under ``token`` (constant time)."""
    return hmac.compare_digest(answer, hmac_answer(token, nonce))
