"""Sends a fixed number of requests one after another over one keep-alive connection, for
instruction counts under callgrind (the rate does not matter there, the count does).

    python3 bench/sequential.py URL SCENARIO COUNT    # SCENARIO: token, pairs, verify, proxy

proxy calls provider bench's API: through /v1/proxy on oauthd, directly when TARGET=bare.

verify reads the states a `pool` run (same COUNT) created and saved to $POOL_FILE, each once:
every verify reads the store (none answers from the verify cache).

BENCH_API_KEY is sent as the bearer token. Exits non-zero if any answer is not 2xx.
"""

import http.client
import json
import os
import sys
import urllib.parse


def main() -> int:
    url, scenario, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    headers = {
        "Authorization": "Bearer " + os.environ.get("BENCH_API_KEY", ""),
        "Content-Type": "application/json",
    }

    def call(method: str, path: str, body=None) -> dict:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status // 100 != 2:
            raise SystemExit(f"{method} {path}: {resp.status} {data[:200]!r}")
        return json.loads(data) if data else {}

    pool_file = os.environ.get("POOL_FILE", "/tmp/oauthd-bench-pool")
    pool = []
    if scenario == "pool":
        with open(pool_file, "w") as f:
            for _ in range(count):
                f.write(call("POST", "/v1/states", {"namespace": "session", "data": {"device": "bench"}})["state"] + "\n")
        return 0
    if scenario == "verify":
        with open(pool_file) as f:
            pool = f.read().split()
    for i in range(count):
        if scenario == "token":
            call("GET", "/v1/connections/bench/default/token")
        elif scenario == "pairs":
            created = call("POST", "/v1/states", {"namespace": "oauth:bench", "data": {"verifier": "abcdefghijklmnopqrstuvwxyz0123456789", "return_to": "/done"}})
            call("POST", "/v1/states/consume", {"state": created["state"], "namespace": "oauth:bench"})
        elif scenario == "verify":
            call("POST", "/v1/states/verify", {"state": pool[i % len(pool)], "namespace": "session"})
        elif scenario == "proxy":
            call("GET", "/api/me" if os.environ.get("TARGET") == "bare" else "/v1/proxy/bench/default/api/me")
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
