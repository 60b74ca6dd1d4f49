"""The synchronous client."""

from __future__ import annotations

import json as _json
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Mapping, Optional

from ._http import DEFAULT_TIMEOUT, Transport, oauthds_problem, problem_of
from .errors import OauthdError
from .models import (
    AccessToken,
    Connection,
    ConnectStarted,
    CreatedState,
    DeviceStarted,
    DeviceStatus,
    ProxyResponse,
    State,
    SubjectState,
    _from,
)


class States:
    """Short-lived secrets: `POST /v1/states` and what follows."""

    def __init__(self, t: Transport):
        self._t = t

    def create(
        self,
        namespace: str,
        *,
        ttl_seconds: Optional[int] = None,
        data: Any = None,
        subject: Optional[str] = None,
        secret: Optional[str] = None,
        max_attempts: Optional[int] = None,
        replace: Optional[bool] = None,
        sliding: Optional[bool] = None,
        max_lifetime_seconds: Optional[int] = None,
    ) -> CreatedState:
        body: Dict[str, Any] = {"namespace": namespace}
        optional = {
            "ttl_seconds": ttl_seconds,
            "data": data,
            "subject": subject,
            "secret": secret,
            "max_attempts": max_attempts,
            "replace": replace,
            "sliding": sliding,
            "max_lifetime_seconds": max_lifetime_seconds,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return _from(CreatedState, self._t.call("POST", "v1", "states", json_body=body).json())

    def _keyed(self, operation: str, state: str, namespace: str, **more: Any) -> State:
        body = {"state": state, "namespace": namespace, **{k: v for k, v in more.items() if v is not None}}
        return _from(State, self._t.call("POST", "v1", "states", operation, json_body=body).json())

    def consume(self, state: str, namespace: str) -> State:
        """Once: the next call for the same state raises NotFound."""
        return self._keyed("consume", state, namespace)

    def verify(self, state: str, namespace: str, *, touch: bool = False) -> State:
        """Without consuming; `touch` slides a sliding state's expiry."""
        return self._keyed("verify", state, namespace, touch=touch or None)

    def attempt(self, state: str, namespace: str, secret: str) -> State:
        """Consumes on a match; raises WrongSecret (with `attempts_left`) otherwise."""
        return self._keyed("attempt", state, namespace, secret=secret)

    def revoke(self, state: str, namespace: str) -> None:
        self._t.call("POST", "v1", "states", "revoke", json_body={"state": state, "namespace": namespace})

    def list_subject(self, namespace: str, subject: str, *, page_size: Optional[int] = None) -> List[SubjectState]:
        """Every live state of the subject, oldest first. oauthd answers a listing in pages
        (at most `page_size` states, 1-1000, and about 1 MiB of data each): they are all
        read, following each page's `next`."""
        states: List[SubjectState] = []
        after: Optional[str] = None
        while True:
            answer = self._t.call(
                "GET", "v1", "namespaces", namespace, "subjects", subject, "states",
                query={"limit": page_size, "after": after},
            ).json()
            states.extend(_from(SubjectState, s) for s in answer["states"])
            after = answer.get("next")
            if not after:
                return states

    def revoke_subject(self, namespace: str, subject: str) -> int:
        """"Sign out everywhere": how many were revoked."""
        answer = self._t.call("DELETE", "v1", "namespaces", namespace, "subjects", subject, "states")
        return int(answer.json()["revoked"])

    def revoke_id(self, namespace: str, id: str) -> None:
        """"Sign out that device", by the id `create` answered."""
        self._t.call("DELETE", "v1", "namespaces", namespace, "states", id)


class Connections:
    """Connected accounts and their fresh access tokens."""

    def __init__(self, t: Transport):
        self._t = t

    def token(self, provider: str, account: str = "default", *, min_ttl: Optional[int] = None) -> AccessToken:
        """A token valid for at least `min_ttl` seconds (oauthd's default: 60), refreshed
        first when needed; raises NeedsReauth when a person must connect again."""
        answer = self._t.call("GET", "v1", "connections", provider, account, "token", query={"min_ttl": min_ttl})
        return _from(AccessToken, answer.json())

    def list(self) -> List[Connection]:
        return [_from(Connection, c) for c in self._t.call("GET", "v1", "connections").json()["connections"]]

    def get(self, provider: str, account: str = "default") -> Connection:
        return _from(Connection, self._t.call("GET", "v1", "connections", provider, account).json())

    def import_tokens(
        self,
        provider: str,
        account: str,
        access_token: str,
        *,
        refresh_token: Optional[str] = None,
        expires_in: Optional[int] = None,
        expires_at: Optional[str] = None,
        scope: Optional[str] = None,
        token_type: Optional[str] = None,
    ) -> Connection:
        body = {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "expires_in": expires_in,
            "expires_at": expires_at,
            "scope": scope,
            "token_type": token_type,
        }
        body = {k: v for k, v in body.items() if v is not None}
        answer = self._t.call("PUT", "v1", "connections", provider, account, json_body=body)
        return _from(Connection, answer.json())

    def delete(self, provider: str, account: str = "default", *, force: bool = False) -> Dict[str, Any]:
        """Revokes at the provider, then deletes; `{}` when revoked, else what was not."""
        answer = self._t.call(
            "DELETE", "v1", "connections", provider, account, query={"force": "true" if force else None}
        )
        return answer.json() or {}


class Connect:
    def __init__(self, t: Transport):
        self._t = t

    def start(self, provider: str, *, account: Optional[str] = None, return_to: Optional[str] = None) -> ConnectStarted:
        """Where to send the person (authorization code + PKCE run by oauthd): oauthd's page
        that asks them to continue; they finish in that browser. A provider with a
        paste-back redirect raises a 400 `paste_back_provider`."""
        body = {k: v for k, v in {"account": account, "return_to": return_to}.items() if v is not None}
        return _from(ConnectStarted, self._t.call("POST", "v1", "connect", provider, json_body=body).json())


class Device:
    """The device flow (RFC 8628): a code the person enters on another device."""

    def __init__(self, t: Transport):
        self._t = t

    def start(self, provider: str, *, account: Optional[str] = None) -> DeviceStarted:
        body = {"account": account} if account is not None else {}
        return _from(DeviceStarted, self._t.call("POST", "v1", "device", provider, json_body=body).json())

    def status(self, provider: str, id: str) -> DeviceStatus:
        # Every final status is an answer here, not an error: 200, 202, 403, 410, 502.
        answer = self._t.call("GET", "v1", "device", provider, id, ok=(200, 202, 403, 410, 502))
        return _from(DeviceStatus, answer.json())

    def poll_until_done(
        self,
        provider: str,
        id: str,
        *,
        timeout: Optional[float] = None,
        interval: Optional[float] = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> DeviceStatus:
        """Waits until the flow is no longer pending (oauthd polls the provider; this
        polls oauthd) and returns how it ended; raises TimeoutError after `timeout`."""
        deadline = None if timeout is None else clock() + timeout
        while True:
            status = self.status(provider, id)
            if status.status != "pending":
                return status
            if deadline is not None and clock() >= deadline:
                raise TimeoutError(f"device flow {id} still pending after {timeout} s")
            wait = interval if interval is not None else max(1.0, float(status.interval))
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - clock()))
            sleep(wait)


class Proxy:
    """Calls to a provider's API through oauthd, which adds the account's token."""

    def __init__(self, t: Transport):
        self._t = t

    def request(
        self,
        method: str,
        provider: str,
        account: str,
        path: str,
        *,
        body: Optional[bytes] = None,
        json: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        query: Optional[Mapping[str, Any]] = None,
    ) -> ProxyResponse:
        """The provider's answer as it is, whatever its status. Problems of oauthd's own
        (`needs_reauth`, `invalid_proxy_path`, …) are raised."""
        all_headers = dict(headers or {})
        if json is not None:
            body = _json.dumps(json).encode()
            all_headers.setdefault("Content-Type", "application/json")
        url = self._t.url("v1", "proxy", provider, account) + "/" + path.lstrip("/")
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        answer = self._t.send(method.upper(), url, body=body, headers=all_headers, resend_unanswered=False)
        if oauthds_problem(answer) is not None:
            raise problem_of(answer)
        return ProxyResponse(answer.status, answer.headers, answer.body)

    def get(self, provider: str, account: str, path: str, **kw: Any) -> ProxyResponse:
        return self.request("GET", provider, account, path, **kw)

    def post(self, provider: str, account: str, path: str, **kw: Any) -> ProxyResponse:
        return self.request("POST", provider, account, path, **kw)


class Client:
    """`Client("http://127.0.0.1:6288", api_key)`: `states`, `connections`, `connect`,
    `device`, `proxy`. oauthd's own 429 and 503 that mean nothing was done (`rate_limited`,
    `storage_unavailable`, …) are retried after their `Retry-After` (at most
    `max_retry_wait` seconds each, `retries` times); a provider's answer through the proxy
    never is. Errors raise `OauthdError` subclasses carrying the problem's `code`."""

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
        self._t = Transport(
            base_url, api_key, timeout=timeout, retries=retries, max_retry_wait=max_retry_wait, sleep=sleep
        )
        self.states = States(self._t)
        self.connections = Connections(self._t)
        self.connect = Connect(self._t)
        self.device = Device(self._t)
        self.proxy = Proxy(self._t)

    def __repr__(self) -> str:
        return f"Client({self._t.base_url!r})"


__all__ = ["Client", "OauthdError"]
