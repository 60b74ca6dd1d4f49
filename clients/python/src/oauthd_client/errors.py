"""Errors: every non-2xx answer from oauthd is a problem document with a stable `code`."""

from __future__ import annotations

from typing import Any, Mapping, Optional


class OauthdError(Exception):
    """oauthd answered with an error. `code` is what to branch on (README, "Errors")."""

    def __init__(self, status: int, code: str, detail: str, problem: Mapping[str, Any]):
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = dict(problem)

    @property
    def retry_after(self) -> Optional[float]:
        value = self.problem.get("_retry_after")
        return float(value) if value is not None else None


class Unauthorized(OauthdError):
    """401: no API key, an unknown or revoked one, or one whose limits exclude this."""


class NotFound(OauthdError):
    """404: e.g. `state_not_found`, `connection_not_found`, `unknown_provider`."""


class Gone(OauthdError):
    """410: e.g. `state_expired`."""


class WrongSecret(OauthdError):
    """403 `wrong_secret`: `attempts_left` tries remain (0: the state is gone)."""

    @property
    def attempts_left(self) -> int:
        return int(self.problem.get("attempts_left", 0))


class NeedsReauth(OauthdError):
    """409 `needs_reauth`: the account must be connected again. An app starts a new flow
    for it (`connect.start`); `reconnect_url` is the operator's page (behind its sign-in)."""

    @property
    def reconnect_url(self) -> Optional[str]:
        return self.problem.get("reconnect_url")


class RateLimited(OauthdError):
    """429, still after the client's bounded retries."""


# The 429s of a limit that holds until something else changes (states consumed, revoked
# or expired; flows ended; connections deleted): retrying at once does not help.
LIMIT_CODES = frozenset(
    {
        "too_many_states",
        "too_many_subject_states",
        "store_full",
        "too_many_key_states",
        "too_many_connections",
        "too_many_device_flows",
    }
)


class LimitReached(RateLimited):
    """429 for a limit that holds until something else changes (`LIMIT_CODES`): the
    namespace or the subject holds its most live states, the store is full, the states a
    key created or its connections or pending device flows are at their most. Consume, revoke or let states
    expire, end flows, delete connections; retrying at once does not help."""


class Unavailable(OauthdError):
    """503 (storage or provider unavailable), still after the client's bounded retries."""


class ConnectionFailed(Exception):
    """oauthd could not be reached, did not answer in time, or answered something that is
    not HTTP/JSON. Not an `OauthdError` (oauthd said nothing): code that answers a person
    catches both."""


def error_for(status: int, problem: Mapping[str, Any]) -> OauthdError:
    code = str(problem.get("code", "unknown"))
    detail = str(problem.get("detail", ""))
    if status == 403 and code == "wrong_secret":
        cls: type = WrongSecret
    elif status == 409 and code == "needs_reauth":
        cls = NeedsReauth
    elif status == 429 and code in LIMIT_CODES:
        cls = LimitReached
    else:
        cls = {401: Unauthorized, 404: NotFound, 410: Gone, 429: RateLimited, 503: Unavailable}.get(
            status, OauthdError
        )
    return cls(status, code, detail, problem)
