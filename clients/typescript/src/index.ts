/**
 * Client for oauthd: short-lived secrets (OAuth state, 2FA codes, reset links, sessions)
 * and fresh access tokens for connected accounts. No runtime dependencies: `fetch` (Node 20+).
 *
 *     import { Client } from "oauthd-client";
 *     const oauthd = new Client("http://127.0.0.1:6288", apiKey);
 *     const s = await oauthd.states.create("myapp:oauth", { data: { verifier } });
 *     const { data } = await oauthd.states.consume(s.state, "myapp:oauth");
 *     const { access_token } = await oauthd.connections.token("spotify");
 */

/** An error answer: every one carries a stable `code` to branch on (README, "Errors"). */
export class OauthdError extends Error {
  readonly status: number;
  readonly code: string;
  readonly detail: string;
  readonly problem: Record<string, unknown>;
  /** Seconds the answer asked to wait (`Retry-After`), when it did. */
  readonly retryAfter: number | undefined;

  constructor(status: number, problem: Record<string, unknown>, retryAfter?: number) {
    const code = typeof problem.code === "string" ? problem.code : "unknown";
    const detail = typeof problem.detail === "string" ? problem.detail : "";
    super(`${status} ${code}: ${detail}`);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.problem = problem;
    this.retryAfter = retryAfter;
  }
}

/** 401: no key, an unknown or revoked one, or one whose limits exclude this. */
export class Unauthorized extends OauthdError {}
/** 404: e.g. `state_not_found`, `connection_not_found`, `unknown_provider`. */
export class NotFound extends OauthdError {}
/** 410: e.g. `state_expired`. */
export class Gone extends OauthdError {}
/** 403 `wrong_secret`. */
export class WrongSecret extends OauthdError {
  get attemptsLeft(): number {
    return Number(this.problem.attempts_left ?? 0);
  }
}
/**
 * 409 `needs_reauth`: the account must be connected again. An app starts a new flow for it
 * (`connect.start`); `reconnectUrl` is the operator's page (behind its sign-in).
 */
export class NeedsReauth extends OauthdError {
  get reconnectUrl(): string | undefined {
    const url = this.problem.reconnect_url;
    return typeof url === "string" ? url : undefined;
  }
}
/** 429, still after the client's bounded retries. */
export class RateLimited extends OauthdError {}
/** 429 for a limit that holds until something else changes (`LIMIT_CODES`: states
 * consumed, revoked or expired, flows ended, connections deleted): retrying at once does
 * not help. */
export class LimitReached extends RateLimited {}
const LIMIT_CODES = new Set([
  "too_many_states", "too_many_subject_states", "store_full", "too_many_key_states", "too_many_connections",
  "too_many_device_flows",
]);
/** 503, still after the client's bounded retries. */
export class Unavailable extends OauthdError {}
/** oauthd could not be reached or did not answer in time. Not an `OauthdError` (oauthd said
 * nothing): code that answers a person catches both. */
export class ConnectionFailed extends Error {}

function errorFor(status: number, problem: Record<string, unknown>, retryAfter?: number): OauthdError {
  const code = problem.code;
  if (status === 403 && code === "wrong_secret") return new WrongSecret(status, problem, retryAfter);
  if (status === 409 && code === "needs_reauth") return new NeedsReauth(status, problem, retryAfter);
  if (status === 429 && LIMIT_CODES.has(String(code))) return new LimitReached(status, problem, retryAfter);
  const byStatus: Record<number, typeof OauthdError> = {
    401: Unauthorized,
    404: NotFound,
    410: Gone,
    429: RateLimited,
    503: Unavailable,
  };
  const Kind = byStatus[status] ?? OauthdError;
  return new Kind(status, problem, retryAfter);
}

export interface CreatedState {
  /** The secret to hand on, given out this once. */
  state: string;
  id: string;
  namespace: string;
  subject: string | null;
  created_at: string;
  expires_at: string;
}

export interface State {
  id: string;
  namespace: string;
  subject: string | null;
  data: unknown;
  created_at: string;
  expires_at: string;
  attempts_left?: number;
}

export interface SubjectState {
  id: string;
  data: unknown;
  created_at: string;
  expires_at: string;
  attempts_left?: number;
}

export interface CreateOptions {
  ttl_seconds?: number;
  data?: unknown;
  subject?: string;
  secret?: string;
  max_attempts?: number;
  replace?: boolean;
  sliding?: boolean;
  max_lifetime_seconds?: number;
}

export interface AccessToken {
  access_token: string;
  token_type: string;
  expires_at: string | null;
  scope: string | null;
}

export interface Connection {
  provider: string;
  account: string;
  status: "active" | "needs_reauth" | "provider_missing";
  scopes: string[];
  token_type: string;
  expires_at: string | null;
  has_refresh_token: boolean;
  last_refresh_at: string | null;
  last_error: string | null;
  failures: number;
  retry_at: string | null;
  created_at: string;
  updated_at: string;
  provider_account?: { sub?: string; email?: string; name?: string };
  reconnect_url?: string;
}

export interface ImportOptions {
  refresh_token?: string;
  expires_in?: number;
  expires_at?: string;
  scope?: string;
  token_type?: string;
}

export interface ConnectStarted {
  authorize_url: string;
  expires_at: string;
  redirect_uri: string;
}

export interface DeviceStarted {
  id: string;
  user_code: string;
  verification_uri: string;
  verification_uri_complete?: string;
  expires_at: string;
  interval: number;
}

export interface DeviceStatus {
  status: "pending" | "connected" | "denied" | "expired" | "failed";
  account: string;
  user_code: string;
  verification_uri: string;
  verification_uri_complete?: string;
  expires_at: string;
  interval: number;
  detail?: string;
  connection?: Connection;
}

export interface ClientOptions {
  /** Per request, in milliseconds (default 45,000: longer than oauthd's own waits, 15 s
   * for a refresh's provider and 30 s for the proxy's, so that their answer arrives). */
  timeoutMs?: number;
  /** How many times a 429, a 503 or a refused connection is retried (default 3). */
  retries?: number;
  /** The longest single wait before a retry, in milliseconds (default 30,000). */
  maxRetryWaitMs?: number;
  /** For tests: how to wait. */
  sleep?: (ms: number) => Promise<void>;
  /** For tests or proxies: which fetch to use. */
  fetch?: typeof fetch;
}

interface Answer {
  status: number;
  headers: Headers;
  body: ArrayBuffer;
}

/** oauthd's own problems (429 and 503) that mean nothing was done and soon can be: the
 * same request is sent again. Not `too_many_states` and the like (a limit that holds until
 * something else changes), and never an answer the proxy passes on from a provider. */
const RETRY_CODES = new Set([
  "rate_limited", "storage_unavailable", "proxy_busy", "provider_unavailable", "entropy_unavailable",
]);
const IDEMPOTENT = new Set(["GET", "HEAD", "PUT", "DELETE", "OPTIONS"]);
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const segment = (s: string) => encodeURIComponent(s);

/** What failed, with its cause: fetch's own message ("fetch failed") says nothing of it. */
function failure(e: unknown): string {
  const message = (e as Error)?.message ?? String(e);
  const cause = (e as { cause?: { message?: unknown } })?.cause?.message;
  return typeof cause === "string" && cause !== "" ? `${message} (${cause})` : message;
}

function refused(e: unknown): boolean {
  const cause = (e as { cause?: { code?: string } })?.cause;
  return cause?.code === "ECONNREFUSED";
}

class Transport {
  readonly baseUrl: string;
  readonly #key: string;
  readonly #o: Required<Omit<ClientOptions, "fetch">> & { fetch: typeof fetch };

  constructor(baseUrl: string, apiKey: string, options: ClientOptions) {
    if (!/^https?:\/\//.test(baseUrl)) throw new TypeError("baseUrl must start with http:// or https://");
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.#key = apiKey;
    this.#o = {
      timeoutMs: options.timeoutMs ?? 45_000,
      retries: options.retries ?? 3,
      maxRetryWaitMs: options.maxRetryWaitMs ?? 30_000,
      sleep: options.sleep ?? sleep,
      fetch: options.fetch ?? globalThis.fetch.bind(globalThis),
    };
  }

  url(segments: string[], query?: Record<string, string | number | boolean | undefined>): string {
    let url = `${this.baseUrl}/${segments.map(segment).join("/")}`;
    const pairs = Object.entries(query ?? {}).filter(([, v]) => v !== undefined);
    if (pairs.length) url += "?" + new URLSearchParams(pairs.map(([k, v]): [string, string] => [k, String(v)])).toString();
    return url;
  }

  /** One request; sent again after oauthd's own 429/503 that mean nothing was done
   * (waiting `Retry-After`, bounded) and after a refused connection; any other answer
   * comes back as it is. An idempotent request left unanswered (a timeout, a dropped
   * connection) is sent again too, unless `resendUnanswered` is false (the proxy: what
   * oauthd passed on may have reached the provider). */
  async send(
    method: string,
    url: string,
    body?: ProxyBody,
    headers?: Record<string, string>,
    resendUnanswered = true,
  ): Promise<Answer> {
    const all = { authorization: `Bearer ${this.#key}`, accept: "application/json", ...headers };
    for (let attempt = 0; ; attempt++) {
      let answer: Answer;
      try {
        const r = await this.#o.fetch(url, {
          method,
          headers: all,
          body,
          redirect: "manual",
          signal: AbortSignal.timeout(this.#o.timeoutMs),
        });
        answer = { status: r.status, headers: r.headers, body: await r.arrayBuffer() };
      } catch (e) {
        if ((refused(e) || (resendUnanswered && IDEMPOTENT.has(method))) && attempt < this.#o.retries) {
          await this.#o.sleep(Math.min(1000 * 2 ** attempt, this.#o.maxRetryWaitMs));
          continue;
        }
        if ((e as Error)?.name === "TimeoutError") {
          throw new ConnectionFailed(
            `oauthd at ${this.baseUrl} did not answer within ${this.#o.timeoutMs} ms (the client's timeoutMs)`,
          );
        }
        throw new ConnectionFailed(`cannot reach oauthd at ${this.baseUrl}: ${failure(e)}`);
      }
      if ((answer.status === 429 || answer.status === 503) && attempt < this.#o.retries
        && RETRY_CODES.has(String(oauthdsProblem(answer)?.code))) {
        await this.#o.sleep(this.#wait(answer, attempt));
        continue;
      }
      return answer;
    }
  }

  #wait(answer: Answer, attempt: number): number {
    const seconds = Number(answer.headers.get("retry-after"));
    const ms = Number.isFinite(seconds) && seconds >= 0 && answer.headers.has("retry-after")
      ? seconds * 1000
      : 1000 * 2 ** attempt;
    return Math.min(ms, this.#o.maxRetryWaitMs);
  }

  /** A JSON call: the parsed answer when its status is in `ok`, else the problem thrown. */
  async call<T>(
    method: string,
    segments: string[],
    { json, query, ok = [200, 201, 204] }: {
      json?: unknown;
      query?: Record<string, string | number | boolean | undefined>;
      ok?: number[];
    } = {},
  ): Promise<T> {
    const body = json === undefined ? undefined : JSON.stringify(json);
    const headers: Record<string, string> = body === undefined ? {} : { "content-type": "application/json" };
    const answer = await this.send(method, this.url(segments, query), body, headers);
    if (!ok.includes(answer.status)) throw problemOf(answer);
    const text = new TextDecoder().decode(answer.body);
    return (text ? JSON.parse(text) : undefined) as T;
  }
}

function problemOf(answer: Answer): OauthdError {
  const text = new TextDecoder().decode(answer.body);
  let problem: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(text);
    problem = parsed && typeof parsed === "object" && !Array.isArray(parsed)
      ? (parsed as Record<string, unknown>)
      : { code: "unexpected_answer", detail: text.slice(0, 200) };
  } catch {
    problem = { code: "unexpected_answer", detail: text.slice(0, 200) };
  }
  const header = answer.headers.get("retry-after");
  return errorFor(answer.status, problem, header === null ? undefined : Number(header));
}

const defined = <T extends object>(o: T) =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));

/** Options the client reads itself: a name it does not know (`min_ttl` for `minTtl`, from
 * plain JavaScript) is an error, not an option silently left out of the request. */
function only<T extends object>(options: T, where: string, known: readonly string[]): T {
  if (options === undefined || options === null) return {} as T;
  if (typeof options !== "object" || Array.isArray(options)) {
    throw new TypeError(`${where}: options must be an object (it takes ${known.join(", ")})`);
  }
  for (const [name, value] of Object.entries(options)) {
    // A name set to undefined says nothing (an object spread from a wider one).
    if (value !== undefined && !known.includes(name)) {
      throw new TypeError(`${where}: unknown option ${JSON.stringify(name)} (it takes ${known.join(", ")})`);
    }
  }
  return options;
}

/** Every `ClientOptions` name, checked complete by the compiler. */
const CLIENT_OPTIONS = ["timeoutMs", "retries", "maxRetryWaitMs", "sleep", "fetch"] as const;
type UnlistedOption = Exclude<keyof ClientOptions, (typeof CLIENT_OPTIONS)[number]>;
const everyOptionListed: UnlistedOption extends never ? true : never = true;
void everyOptionListed;

/** Short-lived secrets: `POST /v1/states` and what follows. */
export class States {
  constructor(private readonly t: Transport) {}

  create(namespace: string, options: CreateOptions = {}): Promise<CreatedState> {
    return this.t.call("POST", ["v1", "states"], { json: { namespace, ...defined(options) } });
  }

  /** Once: the next call for the same state throws NotFound. */
  consume(state: string, namespace: string): Promise<State> {
    return this.t.call("POST", ["v1", "states", "consume"], { json: { state, namespace } });
  }

  /** Without consuming; `touch` slides a sliding state's expiry. */
  verify(state: string, namespace: string, options: { touch?: boolean } = {}): Promise<State> {
    return this.t.call("POST", ["v1", "states", "verify"], { json: { state, namespace, ...defined(options) } });
  }

  /** Consumes on a match; throws WrongSecret (with `attemptsLeft`) otherwise. */
  attempt(state: string, namespace: string, secret: string): Promise<State> {
    return this.t.call("POST", ["v1", "states", "attempt"], { json: { state, namespace, secret } });
  }

  async revoke(state: string, namespace: string): Promise<void> {
    await this.t.call("POST", ["v1", "states", "revoke"], { json: { state, namespace } });
  }

  /**
   * Every live state of the subject, oldest first. oauthd answers a listing in pages (at
   * most `pageSize` states, 1-1000, and about 1 MiB of data each): they are all read,
   * following each page's `next`.
   */
  async listSubject(
    namespace: string,
    subject: string,
    options: { pageSize?: number } = {},
  ): Promise<SubjectState[]> {
    options = only(options, "listSubject", ["pageSize"]);
    const states: SubjectState[] = [];
    let after: string | undefined;
    for (;;) {
      const answer = await this.t.call<{ states: SubjectState[]; next?: string }>(
        "GET",
        ["v1", "namespaces", namespace, "subjects", subject, "states"],
        { query: { limit: options.pageSize, after } },
      );
      states.push(...answer.states);
      after = answer.next;
      if (!after) return states;
    }
  }

  /** "Sign out everywhere": how many were revoked. */
  async revokeSubject(namespace: string, subject: string): Promise<number> {
    const answer = await this.t.call<{ revoked: number }>("DELETE", [
      "v1", "namespaces", namespace, "subjects", subject, "states",
    ]);
    return answer.revoked;
  }

  /** "Sign out that device", by the id `create` answered. */
  async revokeId(namespace: string, id: string): Promise<void> {
    await this.t.call("DELETE", ["v1", "namespaces", namespace, "states", id]);
  }
}

/** Connected accounts and their fresh access tokens. */
export class Connections {
  constructor(private readonly t: Transport) {}

  /** A token valid for at least `minTtl` seconds (oauthd's default: 60), refreshed first
   * when needed; throws NeedsReauth when a person must connect again. */
  async token(provider: string, account = "default", options: { minTtl?: number } = {}): Promise<AccessToken> {
    options = only(options, "token", ["minTtl"]);
    return await this.t.call<AccessToken>("GET", ["v1", "connections", provider, account, "token"], {
      query: { min_ttl: options.minTtl },
    });
  }

  async list(): Promise<Connection[]> {
    return (await this.t.call<{ connections: Connection[] }>("GET", ["v1", "connections"])).connections;
  }

  get(provider: string, account = "default"): Promise<Connection> {
    return this.t.call("GET", ["v1", "connections", provider, account]);
  }

  importTokens(provider: string, account: string, accessToken: string, options: ImportOptions = {}): Promise<Connection> {
    return this.t.call("PUT", ["v1", "connections", provider, account], {
      json: { access_token: accessToken, ...defined(options) },
    });
  }

  /** Revokes at the provider, then deletes; `{}` when revoked, else what was not. */
  async delete(provider: string, account = "default", options: { force?: boolean } = {}): Promise<Record<string, unknown>> {
    options = only(options, "delete", ["force"]);
    const answer = await this.t.call<Record<string, unknown> | undefined>("DELETE", ["v1", "connections", provider, account], {
      query: { force: options.force ? "true" : undefined },
    });
    return answer ?? {};
  }
}

export class Connect {
  constructor(private readonly t: Transport) {}

  /**
   * Where to send the person (authorization code + PKCE, run by oauthd): oauthd's page that
   * asks them to continue; they finish in that browser. A provider with a paste-back
   * redirect answers 400 `paste_back_provider`.
   */
  start(provider: string, options: { account?: string; return_to?: string } = {}): Promise<ConnectStarted> {
    return this.t.call("POST", ["v1", "connect", provider], { json: defined(options) });
  }
}

/** The device flow (RFC 8628): a code the person enters on another device. */
export class Device {
  constructor(private readonly t: Transport, private readonly wait: (ms: number) => Promise<void>) {}

  start(provider: string, options: { account?: string } = {}): Promise<DeviceStarted> {
    return this.t.call("POST", ["v1", "device", provider], { json: defined(options) });
  }

  /** Every final status is an answer, not an error: 200, 202, 403, 410, 502. */
  status(provider: string, id: string): Promise<DeviceStatus> {
    return this.t.call("GET", ["v1", "device", provider, id], { ok: [200, 202, 403, 410, 502] });
  }

  /** Waits until the flow is no longer pending and returns how it ended; throws after
   * `timeoutMs`. */
  async pollUntilDone(
    provider: string,
    id: string,
    options: { timeoutMs?: number; intervalMs?: number } = {},
  ): Promise<DeviceStatus> {
    options = only(options, "pollUntilDone", ["timeoutMs", "intervalMs"]);
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    for (;;) {
      const status = await this.status(provider, id);
      if (status.status !== "pending") return status;
      if (Date.now() >= deadline) throw new Error(`device flow ${id} still pending after ${options.timeoutMs} ms`);
      const interval = options.intervalMs ?? Math.max(1, status.interval) * 1000;
      await this.wait(Math.max(0, Math.min(interval, deadline - Date.now())));
    }
  }
}

/** What a proxied request may send: what `fetch` takes as a body (a string, bytes,
 * `URLSearchParams`, a `Blob`, `FormData`, a stream). */
export type ProxyBody = RequestInit["body"];

/** A proxied request's options: `body`, or `json` (sent as `application/json`), and
 * headers for the provider. */
export interface ProxyOptions {
  body?: ProxyBody;
  json?: unknown;
  headers?: Record<string, string>;
}

export interface ProxyResponse {
  status: number;
  headers: Headers;
  body: ArrayBuffer;
  json<T = unknown>(): T;
  text(): string;
}

/** Calls to a provider's API through oauthd, which adds the account's token. */
export class Proxy {
  constructor(private readonly t: Transport) {}

  /** The provider's answer as it is, whatever its status; oauthd's own problems
   * (`needs_reauth`, `invalid_proxy_path`, …) are thrown. */
  async request(
    method: string,
    provider: string,
    account: string,
    path: string,
    options: ProxyOptions = {},
  ): Promise<ProxyResponse> {
    options = only(options, "proxy", ["body", "json", "headers"]);
    const headers = { ...options.headers };
    let body = options.body;
    if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      headers["content-type"] ??= "application/json";
    }
    const url = `${this.t.url(["v1", "proxy", provider, account])}/${path.replace(/^\/+/, "")}`;
    const answer = await this.t.send(method.toUpperCase(), url, body, headers, false);
    if (oauthdsProblem(answer)) throw problemOf(answer);
    const text = () => new TextDecoder().decode(answer.body);
    return { ...answer, text, json: <T>() => JSON.parse(text()) as T };
  }

  get(provider: string, account: string, path: string, options: ProxyOptions = {}): Promise<ProxyResponse> {
    return this.request("GET", provider, account, path, options);
  }

  post(provider: string, account: string, path: string, options: ProxyOptions = {}): Promise<ProxyResponse> {
    return this.request("POST", provider, account, path, options);
  }

  put(provider: string, account: string, path: string, options: ProxyOptions = {}): Promise<ProxyResponse> {
    return this.request("PUT", provider, account, path, options);
  }

  patch(provider: string, account: string, path: string, options: ProxyOptions = {}): Promise<ProxyResponse> {
    return this.request("PATCH", provider, account, path, options);
  }

  delete(provider: string, account: string, path: string, options: ProxyOptions = {}): Promise<ProxyResponse> {
    return this.request("DELETE", provider, account, path, options);
  }
}

/** The problem document when the answer is oauthd's own (its `type` is
 * `urn:oauthd:problem:…`), not one a provider sent through the proxy. */
function oauthdsProblem(answer: Answer): Record<string, unknown> | undefined {
  if (!(answer.headers.get("content-type") ?? "").startsWith("application/problem+json")) return undefined;
  try {
    const problem: unknown = JSON.parse(new TextDecoder().decode(answer.body));
    if (!problem || typeof problem !== "object") return undefined;
    const type = (problem as Record<string, unknown>).type;
    return typeof type === "string" && type.startsWith("urn:oauthd:problem:")
      ? (problem as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/** `new Client("http://127.0.0.1:6288", apiKey)`: `states`, `connections`, `connect`,
 * `device`, `proxy`. oauthd's own 429 and 503 that mean nothing was done are retried after
 * their `Retry-After` (bounded); a provider's answer through the proxy never is. Errors
 * throw `OauthdError` subclasses carrying the problem's `code`. */
export class Client {
  readonly states: States;
  readonly connections: Connections;
  readonly connect: Connect;
  readonly device: Device;
  readonly proxy: Proxy;

  constructor(baseUrl: string, apiKey: string, options: ClientOptions = {}) {
    options = only(options, "Client", CLIENT_OPTIONS);
    const t = new Transport(baseUrl, apiKey, options);
    this.states = new States(t);
    this.connections = new Connections(t);
    this.connect = new Connect(t);
    this.device = new Device(t, options.sleep ?? sleep);
    this.proxy = new Proxy(t);
  }
}
