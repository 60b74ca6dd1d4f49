"""What oauthd answers, as typed objects. Unknown members are kept in `extra`, so a newer
oauthd does not break an older client."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar

T = TypeVar("T")


def _from(cls: Type[T], data: Mapping[str, Any]) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    known = {k: v for k, v in data.items() if k in names and k != "extra"}
    extra = {k: v for k, v in data.items() if k not in names}
    return cls(**known, extra=extra)  # type: ignore[call-arg]


@dataclass(frozen=True)
class CreatedState:
    """A state just issued: `state` is the secret to hand on, given out this once."""

    state: str
    id: str
    namespace: str
    subject: Optional[str]
    created_at: str
    expires_at: str
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # never the secret
        return f"CreatedState(id={self.id!r}, namespace={self.namespace!r}, expires_at={self.expires_at!r})"


@dataclass(frozen=True)
class State:
    """A state as consume, verify and attempt answer it (never its value)."""

    id: str
    namespace: str
    subject: Optional[str]
    # What the app stored (a PKCE verifier, say): kept out of logs and tracebacks.
    data: Any = field(repr=False)
    created_at: str
    expires_at: str
    attempts_left: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class SubjectState:
    id: str
    data: Any = field(repr=False)
    created_at: str
    expires_at: str
    attempts_left: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class AccessToken:
    access_token: str
    token_type: str
    expires_at: Optional[str]
    scope: Optional[str]
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # never the token
        return f"AccessToken(token_type={self.token_type!r}, expires_at={self.expires_at!r})"


@dataclass(frozen=True)
class Connection:
    provider: str
    account: str
    status: str
    scopes: List[str]
    token_type: str
    expires_at: Optional[str]
    has_refresh_token: bool
    last_refresh_at: Optional[str]
    last_error: Optional[str]
    failures: int
    retry_at: Optional[str]
    created_at: str
    updated_at: str
    provider_account: Optional[Dict[str, Any]] = None
    reconnect_url: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ConnectStarted:
    authorize_url: str
    expires_at: str
    redirect_uri: str
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class DeviceStarted:
    # Whoever enters the code links their account: not in `repr` (logs, tracebacks).
    id: str
    user_code: str = field(repr=False)
    verification_uri: str
    expires_at: str
    interval: int
    verification_uri_complete: Optional[str] = field(default=None, repr=False)
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class DeviceStatus:
    """`status`: pending, connected, denied, expired or failed."""

    status: str
    account: str
    user_code: str = field(repr=False)
    verification_uri: str
    expires_at: str
    interval: int
    verification_uri_complete: Optional[str] = field(default=None, repr=False)
    detail: Optional[str] = None
    connection: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ProxyResponse:
    """The provider's answer, as it is."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)
