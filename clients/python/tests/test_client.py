"""The client against a real oauthd (see conftest.py), and its retry rules against a
server that answers what oauthd only does under faults (503, 429 with Retry-After)."""

import asyncio
import http.server
import json
import os
import threading
import time
import uuid

import pytest

from oauthd_client import (
    AsyncClient,
    Client,
    ConnectionFailed,
    Gone,
    LimitReached,
    NotFound,
    OauthdError,
    RateLimited,
    Unauthorized,
    Unavailable,
    WrongSecret,
)


def ns() -> str:
    return f"pytest:{uuid.uuid4().hex[:12]}"


def test_a_state_is_consumed_exactly_once(oauthd):
    space = ns()
    created = oauthd.states.create(space, ttl_seconds=600, data={"verifier": "v1"})
    assert len(created.state) == 43 and created.namespace == space
    assert created.state not in repr(created)
    assert oauthd.states.verify(created.state, space).data == {"verifier": "v1"}
    consumed = oauthd.states.consume(created.state, space)
    assert consumed.data == {"verifier": "v1"}
    assert "verifier" not in repr(consumed)  # what apps store there stays out of logs
    with pytest.raises(NotFound) as e:
        oauthd.states.consume(created.state, space)
    assert e.value.code == "state_not_found" and e.value.status == 404


def test_a_two_factor_code_allows_its_attempts_and_no_more(oauthd):
    space = ns()
    created = oauthd.states.create(space, ttl_seconds=300, subject="alice", secret="123456", max_attempts=2)
    with pytest.raises(OauthdError) as e:
        oauthd.states.consume(created.state, space)
    assert e.value.code == "secret_required"
    with pytest.raises(WrongSecret) as e:
        oauthd.states.attempt(created.state, space, "000000")
    assert e.value.attempts_left == 1
    assert oauthd.states.attempt(created.state, space, "123456").subject == "alice"
    used_up = oauthd.states.create(space, secret="123456", max_attempts=1)
    with pytest.raises(WrongSecret) as e:
        oauthd.states.attempt(used_up.state, space, "999999")
    assert e.value.attempts_left == 0
    with pytest.raises(NotFound):
        oauthd.states.attempt(used_up.state, space, "123456")


def test_sessions_are_listed_per_subject_and_signed_out(oauthd):
    space = ns()
    first = oauthd.states.create(space, subject="bob", sliding=True, ttl_seconds=600, data={"device": "phone"})
    second = oauthd.states.create(space, subject="bob", data={"device": "laptop"})
    listed = oauthd.states.list_subject(space, "bob")
    assert sorted(s.data["device"] for s in listed) == ["laptop", "phone"]
    touched = oauthd.states.verify(first.state, space, touch=True)
    assert touched.expires_at >= first.expires_at
    oauthd.states.revoke_id(space, second.id)
    assert [s.id for s in oauthd.states.list_subject(space, "bob")] == [first.id]
    # A listing that comes in pages is read to its end.
    paged = [oauthd.states.create(space, subject="carol").id for _ in range(5)]
    pages = oauthd.states.list_subject(space, "carol", page_size=2)
    assert sorted(s.id for s in pages) == sorted(paged)
    # So is one whose data passes a page's 1 MiB.
    big = [oauthd.states.create(space, subject="dora", data={"pad": "x" * 16000}).id for _ in range(70)]
    assert sorted(s.id for s in oauthd.states.list_subject(space, "dora")) == sorted(big)
    assert oauthd.states.revoke_subject(space, "bob") == 1
    with pytest.raises(NotFound):
        oauthd.states.verify(first.state, space)
    third = oauthd.states.create(space)
    oauthd.states.revoke(third.state, space)
    with pytest.raises(NotFound):
        oauthd.states.revoke(third.state, space)


def test_an_expired_state_is_gone(oauthd):
    space = ns()
    created = oauthd.states.create(space, ttl_seconds=1)
    time.sleep(2.2)
    with pytest.raises(Gone) as e:
        oauthd.states.consume(created.state, space)
    assert e.value.code == "state_expired"


def test_a_wrong_key_is_unauthorized():
    wrong = Client(os.environ.get("OAUTHD_URL") or pytest.skip("OAUTHD_URL"), "oauthd_" + "x" * 43, retries=0)
    with pytest.raises(Unauthorized) as e:
        wrong.states.create("app")
    assert e.value.code == "invalid_api_key"
    assert "oauthd_xxx" not in repr(wrong)


def test_a_fresh_token_for_the_connected_account(oauthd, provider):
    token = oauthd.connections.token(provider, min_ttl=10)
    assert token.access_token and token.token_type.lower() == "bearer"
    assert token.access_token not in repr(token)
    connections = oauthd.connections.list()
    assert any(c.provider == provider and c.account == "default" and c.status == "active" for c in connections)
    assert oauthd.connections.get(provider).has_refresh_token
    with pytest.raises(NotFound) as e:
        oauthd.connections.token(provider, "nobody")
    assert e.value.code == "connection_not_found"


def test_the_proxy_reaches_the_providers_api_with_the_token(oauthd, provider):
    answer = oauthd.proxy.get(provider, "default", "me")
    assert answer.status == 200, answer.body
    assert answer.json()["sub"] == "alice"
    with pytest.raises(OauthdError) as e:
        oauthd.proxy.get(provider, "default", "../secret")
    assert e.value.code == "invalid_proxy_path"


def test_imported_tokens_make_a_connection_and_delete_ends_it(oauthd, provider):
    imported = oauthd.connections.import_tokens(provider, "imported", "at-" + uuid.uuid4().hex, expires_in=3600)
    assert imported.account == "imported" and not imported.has_refresh_token
    assert oauthd.connections.token(provider, "imported").access_token.startswith("at-")
    oauthd.connections.delete(provider, "imported", force=True)
    with pytest.raises(NotFound):
        oauthd.connections.get(provider, "imported")


def test_connect_start_gives_the_address_of_oauthds_confirmation_page(oauthd, provider):
    started = oauthd.connect.start(provider, account="second")
    # The person confirms on oauthd's page, which leads on to the provider's.
    page = f"{os.environ['OAUTHD_URL']}/connect/{provider}/confirm?account=second&state="
    assert started.authorize_url.startswith(page), started.authorize_url
    assert started.redirect_uri.endswith(f"/callback/{provider}")


def test_a_device_flow_ends_connected_when_the_person_approves(oauthd, provider, person_dir):
    started = oauthd.device.start(provider, account="tv")
    assert started.user_code and started.verification_uri.startswith("http")
    # The person enters the code on another device (the harness plays them).
    with open(os.path.join(person_dir, "device.tmp"), "w") as f:
        f.write(started.user_code)
    os.rename(os.path.join(person_dir, "device.tmp"), os.path.join(person_dir, "device"))
    done = oauthd.device.poll_until_done(provider, started.id, timeout=60, interval=0.5)
    assert done.status == "connected", done
    assert oauthd.connections.token(provider, "tv").access_token


def test_the_async_client_makes_the_same_calls(oauthd):
    async def run():
        client = AsyncClient(oauthd._t.base_url, oauthd._t._api_key)
        space = ns()
        created = await client.states.create(space, data=[1, 2])
        consumed = await client.states.consume(created.state, space)
        assert consumed.data == [1, 2]
        with pytest.raises(NotFound):
            await client.states.consume(created.state, space)

    asyncio.run(run())


class _Faulty(http.server.BaseHTTPRequestHandler):
    """Answers its scripted statuses in turn, then 201 with a state."""

    script: list = []
    seen: list = []

    def do_POST(self):
        self.seen.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, headers, code = self.script.pop(0) if self.script else (201, {}, None)
        # code None: a problem the proxy passes on from a provider (not oauthd's own).
        kind = f"urn:oauthd:problem:{code}" if code else "https://provider.example/problem"
        body = (
            json.dumps({"type": kind, "code": code or "provider_says_no", "detail": "d"})
            if status >= 400
            else json.dumps(
                {
                    "state": "s" * 43,
                    "id": str(uuid.uuid4()),
                    "namespace": "app",
                    "subject": None,
                    "created_at": "2026-01-01T00:00:00Z",
                    "expires_at": "2026-01-01T01:00:00Z",
                }
            )
        ).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/problem+json" if status >= 400 else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def faulty():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Faulty.seen = []
    yield server
    server.shutdown()
    server.server_close()


def test_retry_after_is_honoured_for_503_and_429_a_bounded_number_of_times(faulty):
    waits = []
    url = f"http://127.0.0.1:{faulty.server_address[1]}"
    client = Client(url, "oauthd_k", retries=3, max_retry_wait=5, sleep=waits.append)
    _Faulty.script = [(503, {"Retry-After": "1"}, "storage_unavailable"), (429, {"Retry-After": "120"}, "rate_limited")]
    assert client.states.create("app").namespace == "app"
    assert waits == [1.0, 5.0]  # the second capped at max_retry_wait
    assert len(_Faulty.seen) == 3 and _Faulty.seen[0] == "Bearer oauthd_k"
    waits.clear()
    _Faulty.script = [(503, {"Retry-After": "2"}, "storage_unavailable")] * 4
    with pytest.raises(Unavailable) as e:
        client.states.create("app")
    assert waits == [2.0, 2.0, 2.0] and e.value.retry_after == 2.0
    assert e.value.code == "storage_unavailable"


def test_a_limit_that_holds_and_a_providers_answer_are_not_sent_again(faulty):
    waits = []
    url = f"http://127.0.0.1:{faulty.server_address[1]}"
    client = Client(url, "oauthd_k", retries=3, sleep=waits.append)
    _Faulty.script = [(429, {"Retry-After": "60"}, "too_many_states")]
    with pytest.raises(LimitReached) as e:
        client.states.create("app")
    assert e.value.code == "too_many_states" and waits == [] and len(_Faulty.seen) == 1
    # The states one API key created at their most (states.max_states_per_key).
    _Faulty.script = [(429, {"Retry-After": "60"}, "too_many_key_states")]
    with pytest.raises(LimitReached) as e:
        client.states.create("app")
    assert e.value.code == "too_many_key_states" and waits == [] and len(_Faulty.seen) == 2
    # Still a RateLimited, as before: code that caught that catches it.
    assert isinstance(e.value, RateLimited)
    # A 429 of another code (a limit that ends by itself) is a RateLimited only.
    _Faulty.script = [(429, {"Retry-After": "5"}, "too_many_tests")]
    with pytest.raises(RateLimited) as e:
        client.states.create("app")
    assert not isinstance(e.value, LimitReached) and e.value.code == "too_many_tests"
    # A POST through the proxy that the provider answers 503: its answer, sent once.
    _Faulty.script = [(503, {"Retry-After": "1"}, None)]
    answer = client.proxy.post("spotify", "default", "v1/me/player/next")
    assert answer.status == 503 and waits == [] and len(_Faulty.seen) == 4


class _Silent(http.server.BaseHTTPRequestHandler):
    """Takes each request and answers none within the client's timeout."""

    seen: list = []

    def do_GET(self):
        self.seen.append(self.path)
        time.sleep(1.5)

    def log_message(self, *args):
        pass


def test_an_unanswered_proxied_call_is_not_sent_again_and_says_it_timed_out():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        waits = []
        url = f"http://127.0.0.1:{server.server_address[1]}"
        client = Client(url, "oauthd_k", timeout=0.3, retries=2, sleep=waits.append)
        _Silent.seen = []
        # What oauthd passed on may have reached the provider: sent once.
        with pytest.raises(ConnectionFailed) as e:
            client.proxy.get("spotify", "default", "v1/me")
        assert "did not answer within 0.3 s" in str(e.value), str(e.value)
        assert len(_Silent.seen) == 1 and waits == []
        # oauthd's own API, idempotent: sent again.
        _Silent.seen = []
        with pytest.raises(ConnectionFailed):
            client.connections.token("spotify")
        assert len(_Silent.seen) == 3 and len(waits) == 2
    finally:
        server.shutdown()
        server.server_close()


def test_the_default_timeout_outlasts_oauthds_own_waits():
    # oauthd answers a refresh's provider after 15 s and the proxy's after 30 s by default.
    assert Client("http://127.0.0.1:9", "oauthd_k")._t.timeout > 30


def test_a_device_flows_code_is_not_in_its_repr():
    from oauthd_client.models import DeviceStarted

    d = DeviceStarted("f1", "WXYZ-1234", "https://p/device", "2026-01-01T00:00:00Z", 5, "https://p/device?c=WXYZ-1234")
    assert "WXYZ" not in repr(d) and d.user_code == "WXYZ-1234"


def test_an_unreachable_oauthd_is_a_clear_error():
    waits = []
    client = Client("http://127.0.0.1:9", "oauthd_k", retries=2, sleep=waits.append)
    with pytest.raises(ConnectionFailed) as e:
        client.states.create("app")
    assert "cannot reach oauthd" in str(e.value) and len(waits) == 2
