// The client against a real oauthd (tests/it/clients.rs starts it, with a real OpenID
// provider as `OAUTHD_PROVIDER`, account `default` connected; `OAUTHD_PERSON_DIR` is where a
// device flow's user code goes for the person on the other device), and its retry rules
// against a server that answers what oauthd only does under faults.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  Client, ConnectionFailed, Gone, LimitReached, NotFound, OauthdError, RateLimited, Unauthorized, Unavailable, WrongSecret,
} from "../dist/index.js";

const { OAUTHD_URL, OAUTHD_API_KEY, OAUTHD_PROVIDER: provider, OAUTHD_PERSON_DIR } = process.env;
const live = { skip: !OAUTHD_URL && "OAUTHD_URL is not set: run through `cargo test --test it clients`" };
const oauthd = () => new Client(OAUTHD_URL, OAUTHD_API_KEY, { retries: 2, maxRetryWaitMs: 2000 });
const ns = () => `node:${randomUUID().slice(0, 12)}`;

test("a state is consumed exactly once", live, async () => {
  const c = oauthd();
  const space = ns();
  const created = await c.states.create(space, { ttl_seconds: 600, data: { verifier: "v1" } });
  assert.equal(created.state.length, 43);
  assert.deepEqual((await c.states.verify(created.state, space)).data, { verifier: "v1" });
  assert.deepEqual((await c.states.consume(created.state, space)).data, { verifier: "v1" });
  await assert.rejects(c.states.consume(created.state, space), (e) => {
    assert.ok(e instanceof NotFound);
    assert.equal(e.code, "state_not_found");
    assert.equal(e.status, 404);
    return true;
  });
});

test("a two-factor code allows its attempts and no more", live, async () => {
  const c = oauthd();
  const space = ns();
  const created = await c.states.create(space, { ttl_seconds: 300, subject: "alice", secret: "123456", max_attempts: 2 });
  await assert.rejects(c.states.consume(created.state, space), (e) => e.code === "secret_required");
  await assert.rejects(c.states.attempt(created.state, space, "000000"),
    (e) => e instanceof WrongSecret && e.attemptsLeft === 1);
  assert.equal((await c.states.attempt(created.state, space, "123456")).subject, "alice");
  const usedUp = await c.states.create(space, { secret: "123456", max_attempts: 1 });
  await assert.rejects(c.states.attempt(usedUp.state, space, "999999"),
    (e) => e instanceof WrongSecret && e.attemptsLeft === 0);
  await assert.rejects(c.states.attempt(usedUp.state, space, "123456"), NotFound);
});

test("sessions are listed per subject and signed out", live, async () => {
  const c = oauthd();
  const space = ns();
  const first = await c.states.create(space, { subject: "bob", sliding: true, ttl_seconds: 600, data: { device: "phone" } });
  const second = await c.states.create(space, { subject: "bob", data: { device: "laptop" } });
  const listed = await c.states.listSubject(space, "bob");
  assert.deepEqual(listed.map((s) => s.data.device).sort(), ["laptop", "phone"]);
  const touched = await c.states.verify(first.state, space, { touch: true });
  assert.ok(touched.expires_at >= first.expires_at);
  await c.states.revokeId(space, second.id);
  assert.deepEqual((await c.states.listSubject(space, "bob")).map((s) => s.id), [first.id]);
  // A listing that comes in pages is read to its end.
  const paged = [];
  for (let i = 0; i < 5; i++) paged.push((await c.states.create(space, { subject: "carol" })).id);
  const pages = await c.states.listSubject(space, "carol", { pageSize: 2 });
  assert.deepEqual(pages.map((s) => s.id).sort(), paged.sort());
  // So is one whose data passes a page's 1 MiB.
  const big = [];
  for (let i = 0; i < 70; i++) {
    big.push((await c.states.create(space, { subject: "dora", data: { pad: "x".repeat(16000) } })).id);
  }
  assert.deepEqual((await c.states.listSubject(space, "dora")).map((s) => s.id).sort(), big.sort());
  assert.equal(await c.states.revokeSubject(space, "bob"), 1);
  await assert.rejects(c.states.verify(first.state, space), NotFound);
  const third = await c.states.create(space);
  await c.states.revoke(third.state, space);
  await assert.rejects(c.states.revoke(third.state, space), NotFound);
});

test("an expired state is gone", live, async () => {
  const c = oauthd();
  const space = ns();
  const created = await c.states.create(space, { ttl_seconds: 1 });
  await new Promise((r) => setTimeout(r, 2200));
  await assert.rejects(c.states.consume(created.state, space), (e) => e instanceof Gone && e.code === "state_expired");
});

test("a wrong key is unauthorized", live, async () => {
  const wrong = new Client(OAUTHD_URL, "oauthd_" + "x".repeat(43), { retries: 0 });
  await assert.rejects(wrong.states.create("app"), (e) => e instanceof Unauthorized && e.code === "invalid_api_key");
});

test("a fresh token for the connected account", live, async () => {
  const c = oauthd();
  const token = await c.connections.token(provider, "default", { minTtl: 10 });
  assert.ok(token.access_token);
  assert.equal(token.token_type.toLowerCase(), "bearer");
  const all = await c.connections.list();
  assert.ok(all.some((x) => x.provider === provider && x.account === "default" && x.status === "active"));
  assert.ok((await c.connections.get(provider)).has_refresh_token);
  await assert.rejects(c.connections.token(provider, "nobody"), (e) => e.code === "connection_not_found");
});

test("the proxy reaches the provider's API with the token", live, async () => {
  const c = oauthd();
  const answer = await c.proxy.get(provider, "default", "me");
  assert.equal(answer.status, 200, answer.text());
  assert.equal(answer.json().sub, "alice");
  await assert.rejects(c.proxy.get(provider, "default", "a%5c..%5csecret"), (e) => e.code === "invalid_proxy_path");
});

test("imported tokens make a connection and delete ends it", live, async () => {
  const c = oauthd();
  const imported = await c.connections.importTokens(provider, "imported-js", "at-" + randomUUID(), { expires_in: 3600 });
  assert.equal(imported.account, "imported-js");
  assert.ok((await c.connections.token(provider, "imported-js")).access_token.startsWith("at-"));
  await c.connections.delete(provider, "imported-js", { force: true });
  await assert.rejects(c.connections.get(provider, "imported-js"), NotFound);
});

test("connect.start gives the address of oauthd's confirmation page", live, async () => {
  const started = await oauthd().connect.start(provider, { account: "second-js" });
  // The person confirms on oauthd's page, which leads on to the provider's.
  const page = `${OAUTHD_URL}/connect/${provider}/confirm?account=second-js&state=`;
  assert.ok(started.authorize_url.startsWith(page), started.authorize_url);
  assert.ok(started.redirect_uri.endsWith(`/callback/${provider}`));
});

test("a device flow ends connected when the person approves", live, async () => {
  const c = oauthd();
  const started = await c.device.start(provider, { account: "tv-js" });
  assert.ok(started.user_code);
  // The person enters the code on another device (the harness plays them).
  writeFileSync(join(OAUTHD_PERSON_DIR, "device.tmp"), started.user_code);
  renameSync(join(OAUTHD_PERSON_DIR, "device.tmp"), join(OAUTHD_PERSON_DIR, "device"));
  const done = await c.device.pollUntilDone(provider, started.id, { timeoutMs: 60_000, intervalMs: 500 });
  assert.equal(done.status, "connected", JSON.stringify(done));
  assert.ok((await c.connections.token(provider, "tv-js")).access_token);
});

/** A server answering its scripted statuses in turn, then 201 with a state. */
async function faulty(script) {
  const seen = [];
  const server = createServer((req, res) => {
    seen.push(req.headers.authorization);
    req.resume();
    req.on("end", () => {
      const [status, headers, code] = script.shift() ?? [201, {}, null];
      // code null: a problem the proxy passes on from a provider (not oauthd's own).
      const body = status >= 400
        ? { type: code ? `urn:oauthd:problem:${code}` : "https://provider.example/problem", code: code ?? "provider_says_no", detail: "d" }
        : { state: "s".repeat(43), id: randomUUID(), namespace: "app", subject: null, created_at: "x", expires_at: "y" };
      res.writeHead(status, { ...headers, "content-type": status >= 400 ? "application/problem+json" : "application/json" });
      res.end(JSON.stringify(body));
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}`, seen, close: () => server.close() };
}

test("Retry-After is honoured for 503 and 429 a bounded number of times", async () => {
  const script = [[503, { "retry-after": "1" }, "storage_unavailable"], [429, { "retry-after": "120" }, "rate_limited"]];
  const s = await faulty(script);
  try {
    const waits = [];
    const c = new Client(s.url, "oauthd_k", { retries: 3, maxRetryWaitMs: 5000, sleep: async (ms) => { waits.push(ms); } });
    assert.equal((await c.states.create("app")).namespace, "app");
    assert.deepEqual(waits, [1000, 5000]);
    assert.equal(s.seen.length, 3);
    assert.equal(s.seen[0], "Bearer oauthd_k");
    waits.length = 0;
    script.push(...Array(4).fill([503, { "retry-after": "2" }, "storage_unavailable"]));
    await assert.rejects(c.states.create("app"),
      (e) => e instanceof Unavailable && e.retryAfter === 2 && e.code === "storage_unavailable");
    assert.deepEqual(waits, [2000, 2000, 2000]);
  } finally {
    s.close();
  }
});

test("a limit that holds and a provider's answer are not sent again", async () => {
  const script = [
    [429, { "retry-after": "60" }, "too_many_states"], [429, { "retry-after": "60" }, "too_many_key_states"],
    [429, { "retry-after": "5" }, "too_many_tests"],
    [503, { "retry-after": "1" }, null],
  ];
  const s = await faulty(script);
  try {
    const waits = [];
    const c = new Client(s.url, "oauthd_k", { retries: 3, sleep: async (ms) => { waits.push(ms); } });
    await assert.rejects(c.states.create("app"), (e) => e instanceof LimitReached && e instanceof RateLimited && e.code === "too_many_states");
    // The states one API key created at their most (states.max_states_per_key).
    await assert.rejects(c.states.create("app"), (e) => e instanceof LimitReached && e.code === "too_many_key_states");
    // A 429 of another code (a limit that ends by itself) is a RateLimited only.
    await assert.rejects(c.states.create("app"), (e) => !(e instanceof LimitReached) && e instanceof RateLimited && e.code === "too_many_tests");
    assert.deepEqual(waits, []);
    // A POST through the proxy that the provider answers 503: its answer, sent once.
    const answer = await c.proxy.post("spotify", "default", "v1/me/player/next");
    assert.equal(answer.status, 503);
    assert.deepEqual(waits, []);
    assert.equal(s.seen.length, 4);
  } finally {
    s.close();
  }
});

test("an unanswered proxied call is not sent again and says it timed out", async () => {
  const seen = [];
  const server = createServer((req) => { seen.push(req.url); req.resume(); });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  try {
    const waits = [];
    const c = new Client(`http://127.0.0.1:${server.address().port}`, "oauthd_k",
      { timeoutMs: 300, retries: 2, sleep: async (ms) => { waits.push(ms); } });
    // What oauthd passed on may have reached the provider: sent once.
    await assert.rejects(c.proxy.get("spotify", "default", "v1/me"),
      (e) => e instanceof ConnectionFailed && /did not answer within 300 ms/.test(e.message));
    assert.equal(seen.length, 1);
    assert.deepEqual(waits, []);
    // oauthd's own API, idempotent: sent again.
    await assert.rejects(c.connections.token("spotify", "default"), (e) => e instanceof ConnectionFailed);
    assert.equal(seen.length, 4);
    assert.equal(waits.length, 2);
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test("an option the client does not know is an error, not left out of the request", async () => {
  const seen = [];
  const server = createServer((req, res) => { seen.push(req.url); res.end("{}"); });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  try {
    const url = `http://127.0.0.1:${server.address().port}`;
    assert.throws(() => new Client(url, "oauthd_k", { timeout: 5 }),
      (e) => e instanceof TypeError && /Client: unknown option "timeout" \(it takes timeoutMs,/.test(e.message));
    const c = new Client(url, "oauthd_k", { retries: 0 });
    await assert.rejects(c.connections.token("spotify", "default", { min_ttl: 3000 }),
      (e) => e instanceof TypeError && /token: unknown option "min_ttl" \(it takes minTtl\)/.test(e.message));
    await assert.rejects(c.states.listSubject("app", "alice", { limit: 1 }), TypeError);
    await assert.rejects(c.connections.delete("spotify", "default", { Force: true }), TypeError);
    await assert.rejects(c.device.pollUntilDone("spotify", "id", { timeout: 5 }), TypeError);
    await assert.rejects(c.proxy.get("spotify", "default", "v1/me", { header: { a: "b" } }), TypeError);
    await assert.rejects(c.connections.token("spotify", "default", "min"),
      (e) => e instanceof TypeError && /token: options must be an object/.test(e.message));
    assert.deepEqual(seen, [], "a request was sent");
    // A name set to undefined (an object spread from a wider one) says nothing; null is none.
    await c.connections.token("spotify", "default", { minTtl: undefined, extra: undefined });
    await c.connections.token("spotify", "default", null);
    seen.length = 0;
    // The names it knows go out as oauthd's.
    await c.connections.token("spotify", "default", { minTtl: 3000 });
    await c.proxy.put("spotify", "default", "v1/me/player", { json: { play: true } });
    assert.deepEqual(seen, ["/v1/connections/spotify/default/token?min_ttl=3000", "/v1/proxy/spotify/default/v1/me/player"]);
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test("an unreachable oauthd is a clear error", async () => {
  // A port nothing listens on (fetch refuses some well-known ones outright).
  const probe = createServer();
  await new Promise((r) => probe.listen(0, "127.0.0.1", r));
  const port = probe.address().port;
  await new Promise((r) => probe.close(r));
  const waits = [];
  const c = new Client(`http://127.0.0.1:${port}`, "oauthd_k", { retries: 2, sleep: async (ms) => { waits.push(ms); } });
  // With the cause: fetch's own "fetch failed" alone says nothing of it.
  await assert.rejects(
    c.states.create("app"),
    (e) => e instanceof ConnectionFailed && /cannot reach oauthd.*ECONNREFUSED/.test(e.message),
  );
  assert.equal(waits.length, 2);
  assert.ok(OauthdError);
});
