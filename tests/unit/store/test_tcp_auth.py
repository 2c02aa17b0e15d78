"""The tcp store's challenge answer: HMAC-SHA256 of the nonce under the token."""

from __future__ import annotations

import hashlib
import hmac

from corral.store.tcp.auth import check_answer, hmac_answer, new_nonce


def test_answer_and_check() -> None:
    nonce = new_nonce()
    assert len(nonce) == 32 and nonce != new_nonce()
    answer = hmac_answer("secret", nonce)
    assert answer == hmac.new(b"secret", nonce.encode(), hashlib.sha256).hexdigest()
    assert check_answer("secret", nonce, answer)
    assert not check_answer("other", nonce, answer)
    assert not check_answer("secret", new_nonce(), answer)
