"""The oauthd these tests talk to is real: tests/it/clients.rs starts it (with a real OpenID
provider as provider `peer`, account `default` connected) and runs pytest with:

- OAUTHD_URL, OAUTHD_API_KEY: the daemon and an API key for everything;
- OAUTHD_PROVIDER: the connected provider (with an API the proxy reaches: its userinfo `me`);
- OAUTHD_PERSON_DIR: where a test leaves a device flow's user code (a file `device`) for
  the person on the other device (the harness) to enter at the provider.
"""

import os

import pytest

from oauthd_client import Client


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: run these tests through `cargo test --test it clients`")
    return value


@pytest.fixture
def oauthd() -> Client:
    return Client(_env("OAUTHD_URL"), _env("OAUTHD_API_KEY"), retries=2, max_retry_wait=2)


@pytest.fixture
def provider() -> str:
    return _env("OAUTHD_PROVIDER")


@pytest.fixture
def person_dir() -> str:
    return _env("OAUTHD_PERSON_DIR")
