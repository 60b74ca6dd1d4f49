"""A small music service in the style of a Spotify or Tidal player: it never stores a token.

- `GET /now-playing?account=NAME` asks oauthd for a fresh access token on every call (oauthd
  refreshes it when needed, once, however many calls race) and calls the music API with it.
- `POST /speakers` `{"account": NAME}` links another account with the device flow: it
  answers the code to enter on the provider's page, and a thread waits for the person.
- `GET /speakers/NAME` says where that stands.

oauthd may restart at any moment: the client retries a refused connection and 503s, and
oauthd resumes device flows where they were. Environment: OAUTHD_URL, OAUTHD_API_KEY,
PROVIDER (its name in oauthd's config), MUSIC_API (the URL to call), PORT (0: a free one).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from oauthd_client import Client, ConnectionFailed, NeedsReauth, NotFound, OauthdError

oauthd = Client(os.environ["OAUTHD_URL"], os.environ["OAUTHD_API_KEY"], retries=5, max_retry_wait=5)
PROVIDER = os.environ["PROVIDER"]
MUSIC_API = os.environ["MUSIC_API"]

speakers: dict[str, dict] = {}
speakers_lock = threading.Lock()


def now_playing(account: str) -> tuple[int, dict]:
    try:
        token = oauthd.connections.token(PROVIDER, account, min_ttl=30)
    except NeedsReauth:
        # The grant is gone: the listener connects again, in their own browser (the
        # reconnect_url in the error is oauthd's page for its operator).
        started = oauthd.connect.start(PROVIDER, account=account)
        return 409, {"error": "connect this account again", "connect_url": started.authorize_url}
    except NotFound:
        return 404, {"error": f"no account {account!r}: link it first"}
    request = urllib.request.Request(MUSIC_API, headers={"Authorization": f"Bearer {token.access_token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            # Spotify's currently-playing answers 204, with no body, when nothing plays.
            body = r.read()
            playing = json.loads(body) if r.status != 204 and body.strip() else None
    except urllib.error.HTTPError as e:
        return 502, {"error": f"the music API answered {e.code}"}
    except ValueError:
        return 502, {"error": "the music API answered something other than JSON"}
    listener = playing.get("sub") if isinstance(playing, dict) else None
    return 200, {
        "account": account,
        "listener": listener,
        "playing": playing,
        "token_expires_at": token.expires_at,
    }


def link_speaker(account: str) -> tuple[int, dict]:
    started = oauthd.device.start(PROVIDER, account=account)
    # The code is in this answer only: whoever enters it links their account.
    with speakers_lock:
        speakers[account] = {"status": "pending", "flow": started.id}

    def wait() -> None:
        # oauthd down for longer than the client's retries (a restart, an upgrade) is
        # waited for: it carries on polling the provider for the flow when it is back.
        deadline = time.monotonic() + 900
        while True:
            try:
                done = oauthd.device.poll_until_done(
                    PROVIDER, started.id, timeout=max(0.0, deadline - time.monotonic())
                )
                result = {"status": done.status}
            except ConnectionFailed as e:
                if time.monotonic() < deadline:
                    time.sleep(5)
                    continue
                result = {"status": "failed", "detail": str(e)}
            except (OauthdError, TimeoutError, OSError) as e:
                result = {"status": "failed", "detail": str(e)}
            break
        with speakers_lock:
            # A newer link for the same speaker replaced this one: leave it be.
            if speakers.get(account, {}).get("flow") == started.id:
                speakers[account].update(result)

    threading.Thread(target=wait, daemon=True).start()
    return 201, {
        "account": account,
        "user_code": started.user_code,
        "verification_uri": started.verification_uri,
        "expires_at": started.expires_at,
    }


class Handler(BaseHTTPRequestHandler):
    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.safely(self.get)

    def do_POST(self) -> None:
        self.safely(self.post)

    def safely(self, handle) -> None:
        try:
            handle()
        except OauthdError as e:
            if e.status >= 500 or e.status == 429:  # still, after the client's retries
                self.answer(503, {"error": f"try again: {e}"})
            else:  # a request that will not work as it is (a bad name, no device flow)
                self.answer(e.status, {"error": e.detail, "code": e.code})
        except (ConnectionFailed, OSError) as e:  # oauthd still unreachable after the retries
            self.answer(503, {"error": f"try again: {e}"})

    def get(self) -> None:
        url = urlparse(self.path)
        if url.path == "/now-playing":
            account = parse_qs(url.query).get("account", ["default"])[0]
            self.answer(*now_playing(account))
        elif url.path.startswith("/speakers/"):
            with speakers_lock:
                found = speakers.get(url.path.removeprefix("/speakers/"))
            self.answer(200, found) if found else self.answer(404, {"error": "no such speaker"})
        else:
            self.answer(404, {"error": "no such page"})

    def post(self) -> None:
        if self.path != "/speakers":
            return self.answer(404, {"error": "no such page"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= 4096:
                raise ValueError
            account = json.loads(self.rfile.read(length))["account"]
        except (ValueError, KeyError, TypeError):
            return self.answer(400, {"error": 'send {"account": NAME}'})
        self.answer(*link_speaker(str(account)))

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Handler)
    print(f"python-music listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
