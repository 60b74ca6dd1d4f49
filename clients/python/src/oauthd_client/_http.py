"""The transport: JSON over HTTP with the standard library, bounded retries."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from .errors import ConnectionFailed, OauthdError, error_for

# oauthd's own problems (429 and 503) that mean nothing was done and soon can be: the same
# request is sent again. Not `too_many_states` and the like (a limit that holds until
# something else changes), and never an answer the proxy passes on from a provider.
RETRY_CODES = frozenset(
    {"rate_limited", "storage_unavailable", "proxy_busy", "provider_unavailable", "entropy_unavailable"}
)
IDEMPOTENT = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
# Per request: longer than oauthd's own waits (a refresh's provider, 15 s by default; the
# proxy's, 30 s), so that their answer (a 503 with Retry-After, a 504) reaches the caller.
DEFAULT_TIMEOUT = 45.0


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> Optional[str]:
        """A header's value, whatever case the server wrote its name in."""
        name = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == name), None)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect is an answer to hand back (the proxy's), never one to follow.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Transport:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        max_retry_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:  # never the key
        return f"Transport({self.base_url!r})"

    def url(self, *segments: str, query: Optional[Mapping[str, Any]] = None) -> str:
        path = "/".join(urllib.parse.quote(s, safe="") for s in segments)
        url = f"{self.base_url}/{path}"
        if query:
            pairs = {k: v for k, v in query.items() if v is not None}
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        return url

    def send(
        self,
        method: str,
        url: str,
        *,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        resend_unanswered: bool = True,
    ) -> Response:
        """One request, sent again after oauthd's own 429/503 that mean nothing was done
        (waiting `Retry-After`, at most `max_retry_wait` seconds each) and after a refused
        connection, up to `retries` times; any other answer comes back as it is. An
        idempotent request left unanswered (a timeout, a dropped connection) is sent again
        too, unless `resend_unanswered` is false (the proxy: what oauthd passed on may have
        reached the provider)."""
        all_headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        all_headers.update(headers or {})
        attempt = 0
        while True:
            request = urllib.request.Request(url, data=body, method=method, headers=all_headers)
            try:
                with self._opener.open(request, timeout=self.timeout) as r:
                    answer = Response(r.status, dict(r.headers.items()), r.read())
            except urllib.error.HTTPError as e:
                answer = Response(e.code, dict(e.headers.items()), e.read())
            # socket.timeout: a read that timed out (before Python 3.10 not a TimeoutError,
            # and not wrapped by urllib); IncompleteRead: an answer cut off.
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout, http.client.IncompleteRead) as e:
                reason = getattr(e, "reason", e)
                # Nothing was sent when the connection was refused; an idempotent request
                # may be sent again whatever happened.
                refused = isinstance(reason, ConnectionRefusedError)
                again = refused or (resend_unanswered and method in IDEMPOTENT)
                if again and attempt < self.retries:
                    attempt += 1
                    self._sleep(min(2.0 ** (attempt - 1), self.max_retry_wait))
                    continue
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    raise ConnectionFailed(
                        f"oauthd at {self.base_url} did not answer within {self.timeout:g} s "
                        "(the client's timeout)"
                    ) from None
                raise ConnectionFailed(f"cannot reach oauthd at {self.base_url}: {reason}") from None
            if answer.status in (429, 503) and attempt < self.retries and _retryable(answer):
                attempt += 1
                self._sleep(self._wait(answer, attempt))
                continue
            return answer

    def _wait(self, answer: Response, attempt: int) -> float:
        value = answer.header("retry-after")
        try:
            seconds = float(value) if value is not None else 2.0 ** (attempt - 1)
        except ValueError:
            seconds = 2.0 ** (attempt - 1)
        return max(0.0, min(seconds, self.max_retry_wait))

    def call(
        self,
        method: str,
        *segments: str,
        json_body: Any = None,
        query: Optional[Mapping[str, Any]] = None,
        ok: tuple = (200, 201, 204),
    ) -> Response:
        """A JSON API call: its answer when the status is in `ok`, else the problem raised."""
        body = None
        headers = {}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        answer = self.send(method, self.url(*segments, query=query), body=body, headers=headers)
        if answer.status in ok:
            return answer
        raise problem_of(answer)


def oauthds_problem(answer: Response) -> Optional[dict]:
    """The problem document when the answer is oauthd's own (`urn:oauthd:problem:…`), not
    one a provider sent through the proxy."""
    if not (answer.header("content-type") or "").startswith("application/problem+json"):
        return None
    try:
        problem = json.loads(answer.body)
    except ValueError:
        return None
    kind = problem.get("type") if isinstance(problem, dict) else None
    return problem if isinstance(kind, str) and kind.startswith("urn:oauthd:problem:") else None


def _retryable(answer: Response) -> bool:
    problem = oauthds_problem(answer)
    return problem is not None and problem.get("code") in RETRY_CODES


def problem_of(answer: Response) -> OauthdError:
    try:
        problem = json.loads(answer.body)
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"code": "unexpected_answer", "detail": answer.body[:200].decode("utf-8", "replace")}
    retry_after = answer.header("retry-after")
    if retry_after is not None:
        problem["_retry_after"] = retry_after
    return error_for(answer.status, problem)
