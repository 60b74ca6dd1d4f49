"""Client for oauthd: short-lived secrets (OAuth state, 2FA codes, reset links, sessions)
and fresh access tokens for connected accounts.

    from oauthd_client import Client
    oauthd = Client("http://127.0.0.1:6288", api_key)
    s = oauthd.states.create("myapp:oauth", data={"verifier": v})
    oauthd.states.consume(s.state, "myapp:oauth").data
    oauthd.connections.token("spotify").access_token
"""

from .aio import AsyncClient
from .client import Client
from .errors import (
    ConnectionFailed,
    Gone,
    LimitReached,
    NeedsReauth,
    NotFound,
    OauthdError,
    RateLimited,
    Unauthorized,
    Unavailable,
    WrongSecret,
)
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
)

__version__ = "0.1.0"

__all__ = [
    "AccessToken",
    "AsyncClient",
    "Client",
    "Connection",
    "ConnectStarted",
    "ConnectionFailed",
    "CreatedState",
    "DeviceStarted",
    "DeviceStatus",
    "Gone",
    "LimitReached",
    "NeedsReauth",
    "NotFound",
    "OauthdError",
    "ProxyResponse",
    "RateLimited",
    "State",
    "SubjectState",
    "Unauthorized",
    "Unavailable",
    "WrongSecret",
]
