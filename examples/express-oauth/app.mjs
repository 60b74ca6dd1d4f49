// An Express app that signs people in with an OpenID provider by its own authorization-code
// flow (PKCE), then guards an action with a 2FA code — and keeps every short-lived secret in
// oauthd instead of in memory or a Redis of its own:
//
//   the OAuth state and PKCE verifier   oauthd state, 60 minutes, consumed once on /callback
//   the session                          oauthd state, 24 h sliding, verified on each request
//   the 2FA code                         oauthd state with a secret, 5 minutes, 5 attempts
//   the codes sent to a person           a marker per code, capped by oauthd's config
//
// Restart the app (or oauthd) in the middle of a sign-in, or let the person take a quarter
// of an hour over the provider's own 2FA: the sign-in still finishes.
//
// Environment: OAUTHD_URL, OAUTHD_API_KEY; ISSUER (the provider), CLIENT_ID, CLIENT_SECRET;
// PORT (0: a free one); PUBLIC_URL (where browsers reach the app; default its loopback
// address); CODE_OUTBOX (a file the 2FA code is "sent" to; a real app mails or texts it).
import express from "express";
import { createHash, randomBytes, randomInt } from "node:crypto";
import { appendFileSync } from "node:fs";
import { Client, Gone, LimitReached, NotFound, OauthdError, WrongSecret } from "oauthd-client";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
// Every call answers a person waiting on a page: no retries (the client's default waits
// through oauthd's 503s for up to about 90 s); the page says "try again" instead.
const oauthd = new Client(env("OAUTHD_URL"), env("OAUTHD_API_KEY"), { retries: 0 });
const issuer = env("ISSUER").replace(/\/+$/, "");
const client = { id: env("CLIENT_ID"), secret: env("CLIENT_SECRET") };
const meta = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
// OpenID Connect Discovery 4.3: the metadata must be the issuer's own.
if (String(meta.issuer).replace(/\/+$/, "") !== issuer) {
  throw new Error(`ISSUER is ${issuer}, but its metadata names ${meta.issuer}: set ISSUER to the provider's issuer`);
}

const SIGN_IN = "express:oauth"; // the OAuth state: one per sign-in, consumed on /callback
const SESSIONS = "express:session"; // one per signed-in browser
const CODES = "express:2fa"; // one per 2FA challenge
// One marker per code sent, never consumed, for an hour: at most MAX_CODES a person an
// hour, so that a script asking for code after code, five guesses each, does not get
// through a 6-digit code within a day.
const SENT = "express:2fa:sent";
const MAX_CODES = 3;

const b64url = (bytes) => Buffer.from(bytes).toString("base64url");
const page = (res, status, text) => res.status(status).type("text/plain").send(text + "\n");
let publicUrl = process.env.PUBLIC_URL; // set once listening when not configured
const secure = () => (publicUrl.startsWith("https:") ? "; Secure" : "");
const redirectUri = () => `${publicUrl}/callback`;
const cookie = (req, name) =>
  (req.headers.cookie ?? "").split(/;\s*/).map((c) => c.split("=")).find(([k]) => k === name)?.[1];

const app = express();
app.use(express.urlencoded({ extended: false }));

app.get("/login", async (req, res) => {
  const verifier = b64url(randomBytes(32));
  // The state and the verifier live in oauthd: 60 minutes, whatever restarts meanwhile.
  const { state } = await oauthd.states.create(SIGN_IN, { ttl_seconds: 3600, data: { verifier } });
  // ... and is bound to this browser: a callback link someone else started (to sign the
  // victim in to the attacker's account) finds no matching cookie.
  res.setHeader("set-cookie", `signin=${state}; HttpOnly; SameSite=Lax; Path=/callback; Max-Age=3600${secure()}`);
  const url = new URL(meta.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: "code",
    client_id: client.id,
    redirect_uri: redirectUri(),
    scope: "openid",
    state,
    code_challenge: b64url(createHash("sha256").update(verifier).digest()),
    code_challenge_method: "S256",
  }).toString();
  res.redirect(url.toString());
});

app.get("/callback", async (req, res) => {
  const { state, code, iss, error } = req.query;
  if (typeof state !== "string") return page(res, 400, "no state: start again at /login");
  if (cookie(req, "signin") !== state) {
    return page(res, 403, "this sign-in was not started in this browser: start again at /login");
  }
  let signIn;
  try {
    // Exactly once: a replayed callback finds nothing.
    signIn = await oauthd.states.consume(state, SIGN_IN);
  } catch (e) {
    if (e instanceof Gone) return page(res, 410, "this sign-in took too long: start again at /login");
    // 404, or 400 for a value that is no state at all (a cookie set by hand).
    if (e instanceof NotFound || refusedInput(e)) {
      return page(res, 400, "unknown or already used sign-in: start again at /login");
    }
    throw e;
  }
  if (error) return page(res, 403, "the provider did not sign you in: start again at /login");
  if (typeof code !== "string") return page(res, 400, "the provider sent no code: start again at /login");
  // RFC 9207: a provider that says it names itself in the answer must, with its own name; one
  // that does not say so may leave it out (many do), but a name it sends must be its own.
  const issExpected = meta.authorization_response_iss_parameter_supported === true;
  if (iss === undefined ? issExpected : iss !== meta.issuer) {
    return page(res, 400, "the answer did not come from the provider");
  }
  const token = await fetch(meta.token_endpoint, {
    method: "POST",
    headers: {
      authorization: `Basic ${Buffer.from(`${client.id}:${client.secret}`).toString("base64")}`,
      "content-type": "application/x-www-form-urlencoded",
    },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code,
      redirect_uri: redirectUri(),
      code_verifier: signIn.data.verifier,
    }),
  });
  if (!token.ok) return page(res, 502, `the provider refused the code (${token.status})`);
  const { access_token } = await token.json();
  const info = await fetch(meta.userinfo_endpoint, { headers: { authorization: `Bearer ${access_token}` } });
  if (!info.ok) return page(res, 502, `the provider did not say who you are (${info.status})`);
  const me = await info.json();
  // The session: 24 h, sliding on each request; listed and revoked per user.
  const session = await oauthd.states.create(SESSIONS, {
    subject: me.sub, sliding: true, ttl_seconds: 86400, data: { sub: me.sub },
  });
  res.setHeader("set-cookie", [
    `session=${session.state}; HttpOnly; SameSite=Lax; Path=/${secure()}`,
    "signin=; HttpOnly; SameSite=Lax; Path=/callback; Max-Age=0",
  ]);
  page(res, 200, `signed in as ${me.sub}`);
});

/** oauthd's 400: what the person sent (a challenge, a code, a cookie) is not valid. */
const refusedInput = (e) => e instanceof OauthdError && e.status === 400;

/** The signed-in person, from the session cookie (verified, and its expiry slid). */
async function person(req) {
  const value = cookie(req, "session");
  if (!value) return undefined;
  try {
    return (await oauthd.states.verify(value, SESSIONS, { touch: true })).subject;
  } catch (e) {
    if (e instanceof NotFound || e instanceof Gone || refusedInput(e)) return undefined;
    throw e;
  }
}

app.get("/me", async (req, res) => {
  const who = await person(req);
  if (!who) return page(res, 401, "not signed in: /login");
  page(res, 200, `signed in as ${who}`);
});

app.post("/2fa/start", async (req, res) => {
  const who = await person(req);
  if (!who) return page(res, 401, "not signed in: /login");
  // Each new code comes with five fresh attempts: count the codes sent first. oauthd's
  // config may refuse the marker past a cap of its own (README); without it, the app
  // counts: its marker first, then the person's markers, so that of any number of asks at
  // once none past the cap sees itself within it. A refused ask takes its marker back.
  let marker;
  try {
    marker = await oauthd.states.create(SENT, { subject: who, ttl_seconds: 3600 });
  } catch (e) {
    if (e instanceof LimitReached) return tooManyCodes(res, e.retryAfter ?? 3600);
    throw e;
  }
  const sent = await oauthd.states.listSubject(SENT, who);
  if (sent.length > MAX_CODES) {
    await oauthd.states.revokeId(SENT, marker.id);
    // Free once all but MAX_CODES - 1 of the others have expired.
    const ends = sent.filter((s) => s.id !== marker.id).map((s) => Date.parse(s.expires_at));
    ends.sort((a, b) => a - b);
    return tooManyCodes(res, Math.ceil((ends[ends.length - MAX_CODES] - Date.now()) / 1000));
  }
  const code = String(randomInt(0, 1_000_000)).padStart(6, "0");
  // One challenge per person (replace), 5 minutes, 5 attempts; oauthd keeps only a hash.
  const challenge = await oauthd.states.create(CODES, {
    subject: who, secret: code, max_attempts: 5, ttl_seconds: 300, replace: true,
  });
  appendFileSync(env("CODE_OUTBOX"), `${who} ${code}\n`); // a real app mails or texts it
  res.json({ challenge: challenge.state });
});

function tooManyCodes(res, seconds) {
  const wait = Math.max(1, seconds);
  res.setHeader("retry-after", String(wait));
  page(res, 429, `too many codes asked for: try again in ${Math.ceil(wait / 60)} minutes`);
}

app.post("/2fa/verify", async (req, res) => {
  const who = await person(req);
  if (!who) return page(res, 401, "not signed in: /login");
  const { challenge, code } = req.body ?? {};
  if (typeof challenge !== "string" || typeof code !== "string") return page(res, 400, "send challenge and code");
  try {
    // oauthd compares byte for byte: " 493817" would be a wrong try.
    const done = await oauthd.states.attempt(challenge, CODES, code.trim());
    // Another person's challenge verifies nothing for this one.
    if (done.subject !== who) return page(res, 403, "this code is someone else's");
    page(res, 200, `verified ${done.subject}`);
  } catch (e) {
    if (e instanceof WrongSecret) {
      return e.attemptsLeft > 0
        ? page(res, 403, `wrong code: ${e.attemptsLeft} attempts left`)
        : page(res, 403, "wrong code: no attempts left, ask for a new one");
    }
    if (e instanceof NotFound || e instanceof Gone) return page(res, 410, "this code is no longer valid: ask for a new one");
    if (refusedInput(e)) return page(res, 400, "not a challenge and code this app sent: ask for a new one");
    throw e;
  }
});

app.use((err, req, res, _next) => {
  console.error(err);
  page(res, 503, "something went wrong: try again");
});

const server = app.listen(Number(process.env.PORT ?? 3000), "127.0.0.1", () => {
  const here = `http://127.0.0.1:${server.address().port}`;
  publicUrl ??= here;
  console.log(`express-oauth listening on ${here}`);
});
