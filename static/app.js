// oauthd's page: plain DOM, no build step. Data is inserted as text, never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
// The path oauthd is served under ("" at the root; "/oauthd" behind a proxy's prefix).
const BASE = document.querySelector('meta[name="oauthd-base"]').content;
let csrf = "";
let providers = [];
let connections = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// Said at the top of the page: scrolled into view, so that a message about a button far
// down (a connect that could not start) is seen.
function notice(text) {
  const n = $("#notice");
  n.textContent = text;
  if (text) n.scrollIntoView({ block: "nearest" });
}

// The sign-in form, holding the reconnect link the page was opened with (if any), which
// oauthd opens again once signed in.
function showSignIn() {
  const params = new URLSearchParams(location.search);
  $("#signin-reconnect").value = params.get("reconnect") || "";
  $("#signin-account").value = params.get("account") || "";
  $("#signin").hidden = false;
}

// The session ended (signed out elsewhere, revoked, expired): the sign-in form again.
function signedOut() {
  showSignIn();
  $("#app").hidden = true;
  notice("Your session ended: sign in again.");
}

// A time in the reader's locale, short; the exact RFC 3339 value stays in the tooltip.
function when(iso, none) {
  if (!iso) return el("span", {}, none);
  const d = new Date(iso);
  return el("time", { datetime: iso, title: iso }, d.toLocaleString([], { dateStyle: "short", timeStyle: "short" }));
}

async function api(method, path, body) {
  const resp = await fetch(BASE + path, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) signedOut();
  if (!resp.ok && resp.status !== 202) {
    const err = new Error(resp.status === 401 ? "your session ended: sign in again" : data.detail || `HTTP ${resp.status}`);
    err.code = data.code;
    // Set where a flow's state was taken: the flow is over, for that account.
    err.account = data.account;
    throw err;
  }
  return { status: resp.status, data };
}

function statusText(c) {
  if (c.status === "provider_missing") return ["provider not configured", "status-needs_reauth"];
  if (c.status === "needs_reauth") return ["needs reauth", "status-needs_reauth"];
  if (c.failures > 0) return ["refreshing error", "status-failing"];
  return ["active", "status-active"];
}

// Who the connection is at its provider, as its ID token said ("" when it did not).
function who(c) {
  const a = c.provider_account;
  return a ? a.email || a.name || a.sub || "" : "";
}

// Which account at the provider this is, when its ID token said.
function whichAccount(c) {
  return who(c) ? el("div", { class: "hint", "data-provider-account": "" }, who(c)) : "";
}

// The connection a connect under this account name would replace, if there is one.
function existingConnection(provider, account) {
  return connections.find((c) => c.provider === provider && c.account === (account || "default"));
}

// Before a connect that replaces a connection: who it is now, and that whoever is signed in
// at the provider in this browser takes its place (the apps that read it get their tokens).
function replaceConfirmed(c, byCode) {
  if (!c || !who(c)) return true;
  const whom = byCode
    ? `whoever approves the code, on whatever device, and the apps that read it get that account's tokens.`
    : `whoever is signed in at ${c.provider} in this browser, and the apps that read it get that account's tokens. To choose the account, sign out at ${c.provider} first.`;
  return confirm(`${c.provider} (${c.account}) is ${who(c)} at ${c.provider}. Connecting it again replaces it with ${whom} Go on?`);
}

// The names of the apps' keys limited to some accounts that read this connection's tokens.
function sharedWith(c) {
  return (c.account_limited_keys || []).map((k) => `"${k}"`).join(", ");
}

// The other active connections signed in as the same account at c's provider: at many
// providers they share one grant, which revoking c's tokens ends.
function sameAccount(c, list) {
  const sub = c.provider_account && c.provider_account.sub;
  if (!sub) return [];
  return list
    .filter((o) => o !== c && o.provider === c.provider && o.status === "active" && o.provider_account && o.provider_account.sub === sub)
    .map((o) => `${o.provider}/${o.account}`);
}

function renderConnections(list) {
  const body = $("#connections tbody");
  body.replaceChildren();
  $("#connections").hidden = list.length === 0;
  $("#no-connections").hidden = list.length !== 0;
  for (const c of list) {
    const [text, cls] = statusText(c);
    const actions = el("div", { class: "row" });
    const missing = c.status === "provider_missing";
    const readers = sharedWith(c);
    const name = `${c.provider}/${c.account}`;
    if (c.status === "needs_reauth") {
      const ask = `The app key(s) ${readers} read ${c.provider} (${c.account}): whoever you sign in as, they get the tokens. Reconnect it here all the same?`;
      actions.append(el("button", { "aria-label": `Reconnect ${name}`, onclick: () => { if (readers ? confirm(ask) : replaceConfirmed(c)) connect(c.provider, c.account, true); } }, "Reconnect"));
    }
    actions.append(el("button", { class: "danger", "aria-label": `${missing ? "Delete" : "Disconnect"} ${name}`, onclick: () => disconnect(c.provider, c.account, missing, sameAccount(c, list)) }, missing ? "Delete" : "Disconnect"));
    const status = el("td", {}, el("span", { class: cls }, text));
    if (c.last_error) status.append(el("div", { class: "hint" }, c.last_error));
    status.setAttribute("data-label", "Status");
    body.append(el("tr", { "data-connection": `${c.provider}/${c.account}` },
      el("td", { "data-label": "Provider" }, c.provider),
      el("td", { "data-label": "Account" }, c.account, whichAccount(c),
        readers ? el("div", { class: "hint", "data-shared": "" }, `read by app key(s) ${readers}`) : ""), status,
      el("td", { "data-label": "Scopes" }, c.scopes.join(" ")),
      el("td", { "data-label": "Token expires" }, when(c.expires_at, "unknown")),
      el("td", { "data-label": "Last refresh" }, when(c.last_refresh_at, "never")), el("td", {}, actions)));
  }
}

function renderProviders(providers, focus) {
  const root = $("#providers");
  root.replaceChildren();
  if (providers.length === 0) {
    root.append(el("p", { id: "no-providers" }, "No providers are configured yet. Add a [providers.NAME] table to oauthd's config file (see oauthd.example.toml and the README's \"Provider configuration\"), restart oauthd, and it appears here."));
  }
  for (const p of providers) {
    const id = `account-${p.name}`;
    const account = el("input", { id, value: focus && focus.provider === p.name ? focus.account : "default", "aria-label": `Account name for ${p.name}` });
    const copy = el("button", { class: "secondary", "aria-label": `Copy ${p.name}'s redirect URI`, onclick: async () => {
      try { await navigator.clipboard.writeText(p.redirect_uri); notice("Redirect URI copied."); }
      catch { notice("Copy it by hand: " + p.redirect_uri); }
    } }, "Copy");
    const buttons = el("div", { class: "row" },
      el("label", { for: id }, "Account"), account,
      el("button", { "data-connect": p.name, onclick: () => connect(p.name, account.value) }, `Connect ${p.name}`));
    if (p.device) {
      buttons.append(el("button", { class: "secondary", "data-device": p.name, "aria-label": `Connect ${p.name} with a code`, onclick: () => device(p.name, account.value) }, "Connect with a code"));
    }
    const cred = p.credentials || { status: "unknown", detail: "" };
    const credText = { accepted: "Client id and secret: accepted by " + p.name,
      refused: "Client id and secret: refused by " + p.name + ". Fix client_id / client_secret in the config before connecting.",
      unknown: "Client id and secret: could not be checked" }[cred.status];
    root.append(el("div", { class: "card" },
      el("h3", {}, p.name),
      el("p", { class: cred.status === "refused" ? "hint status-needs_reauth" : "hint", "data-credentials": cred.status, title: cred.detail || "" }, credText),
      el("div", { class: "row" }, el("span", { class: "hint" }, "Redirect URI to register:"), el("code", {}, p.redirect_uri), copy),
      p.paste ? el("p", { class: "hint" }, "Paste-back: nothing answers at this address. After you approve, you copy the address your browser ends on back here.") : "",
      buttons,
      el("p", { class: "hint" }, `After you click Connect you have ${p.flow_ttl} to finish at ${p.name}.`),
      el("div", { id: `device-${p.name}` }),
      el("div", { id: `paste-${p.name}` })));
  }
}

async function load() {
  const resp = await fetch(`${BASE}/ui/api/overview`, { credentials: "same-origin" });
  if (resp.status === 401) { showSignIn(); $("#app").hidden = true; return; }
  const data = await resp.json();
  connections = data.connections;
  csrf = data.csrf;
  $("#signout-csrf").value = csrf;
  providers = data.providers;
  const params = new URLSearchParams(location.search);
  // A reconnect link (from an app's 409 needs_reauth, or a failed sign-in) picks an
  // account only when it is one of the connections: anyone can write such a link, and a
  // new account filled in for a click would hand the grant to whoever named it.
  const asked = params.get("reconnect") ? { provider: params.get("reconnect"), account: params.get("account") || "default" } : null;
  const known = asked && data.connections.find((c) => c.provider === asked.provider && c.account === asked.account);
  // Nor when an app limited to some accounts (a tenant's) reads it: an app can create the
  // account itself (an import) and have oauthd send the operator this very link.
  const readers = known ? sharedWith(known) : "";
  const configured = known && providers.some((p) => p.name === known.provider);
  const focus = configured && !readers ? asked : null;
  if (known && !configured) notice(`${known.provider} is no longer in oauthd's config: add it back and restart oauthd to reconnect ${known.provider} (${known.account}).`);
  else if (focus) notice(`Reconnect ${focus.provider} (${focus.account}): press "Connect ${focus.provider}" below.`);
  else if (known) notice(`${known.provider} (${known.account}) is read by the app key(s) ${readers}, limited to some accounts: whoever you sign in as here, they get that account's tokens. Its user reconnects it from that app (its own connect flow). Connect it here only if you mean to give them your sign-in: type the account name below.`);
  // The link's words are shown only when they name a configured provider and an account
  // name oauthd could hold: anyone can write the link, and the notice must not carry
  // their text.
  else if (asked) {
    const plausible = providers.some((p) => p.name === asked.provider) && /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(asked.account);
    const named = plausible ? ` ${asked.provider} (${asked.account})` : "";
    notice(`There is no connection${named} to reconnect. Connect a new account only if you mean to, and only under a name you chose.`);
  }
  renderConnections(data.connections);
  renderProviders(data.providers, focus);
  $("#signin").hidden = true;
  $("#app").hidden = false;
  // Focused once shown (a hidden field takes no focus).
  if (focus) document.getElementById(`account-${focus.provider}`)?.focus();
  await loadNotifications().catch((e) => notice(`Notifications could not be read: ${e.message}`));
}

function failureText(d) {
  if (!d) return "none";
  return `${d.type}: ${d.last_error || d.status} (${d.status}, ${d.attempts} attempts)`;
}

async function loadNotifications() {
  const { data } = await api("GET", "/ui/api/events");
  $("#no-targets").hidden = data.targets.length > 0;
  $("#notify").hidden = data.targets.length === 0;
  $("#targets tbody").replaceChildren(...data.targets.map((t) => el("tr", { "data-target": t.name },
    el("td", {}, t.name),
    el("td", {}, `${t.host} (${t.format}${t.signed ? ", signed" : ""})`),
    el("td", {}, t.last_delivered ? when(t.last_delivered.finished_at, "never") : "never"),
    el("td", { class: t.last_failure || t.gone_since ? "status-failing" : "" },
      t.gone_since
        ? el("span", { class: "gone" }, "Gone: it answered 410 at ", when(t.gone_since, ""),
          "; nothing is sent to it until its url changes or a delivery is retried by hand. ")
        : "",
      failureText(t.last_failure)))));
  $("#deliveries tbody").replaceChildren(...data.deliveries.map((d) => el("tr", {},
    el("td", {}, d.type), el("td", {}, d.target), el("td", {}, d.status), el("td", {}, String(d.attempts)),
    el("td", {}, when(d.created_at, "")), el("td", {}, d.last_error || ""))));
  $("#outbox-pending").textContent = data.pending > 0 ? `${data.pending} waiting to be delivered` : "";
}

async function notifyTest() {
  try {
    const { data } = await api("POST", "/ui/api/notify/test");
    notice(`Test notification sent to ${data.targets.join(", ")}; it arrives within seconds.`);
    setTimeout(() => loadNotifications().catch(() => {}), 2000);
  } catch (e) { notice(`Could not send a test notification: ${e.message}`); }
}

async function connect(provider, account, confirmed) {
  // An account typed that is a connection already is replaced by whoever signs in.
  if (!confirmed && !replaceConfirmed(existingConnection(provider, account))) return;
  const p = providers.find((x) => x.name === provider);
  // Paste-back opens the provider in a new tab (opened now, while the click counts, so no
  // popup blocker stops it) and keeps this page for the address to paste.
  const tab = p && p.paste ? window.open("about:blank", "_blank") : null;
  if (tab) tab.opener = null;
  try {
    const { data } = await api("POST", `/ui/api/connect/${encodeURIComponent(provider)}`, { account });
    notice(`Opening ${provider}… you have ${p ? p.flow_ttl : "60 minutes"} to finish there.`);
    if (p && p.paste) {
      if (tab) tab.location.assign(data.authorize_url);
      pasteBox(provider, account, data.authorize_url, Boolean(tab));
    } else {
      location.assign(data.authorize_url);
    }
  } catch (e) {
    if (tab) tab.close();
    notice(`Could not start: ${e.message}`);
  }
}

// The paste-back field: the address the browser ended on after approving at the provider.
function pasteBox(provider, account, authorizeUrl, opened) {
  const box = document.getElementById(`paste-${provider}`);
  const id = `paste-url-${provider}`;
  const field = el("input", { id, type: "url", class: "wide", autocomplete: "off", spellcheck: "false", placeholder: "http://127.0.0.1/callback/…?code=…&state=…" });
  const status = el("p", { class: "hint", role: "status" });
  const button = el("button", { "data-paste": provider }, "Finish connecting");
  let busy = false;
  const finish = async () => {
    if (busy) return; // Enter and a click: one request, not two
    busy = true;
    button.disabled = true;
    status.textContent = "Checking…";
    try {
      const { data } = await api("POST", `/ui/api/paste/${encodeURIComponent(provider)}`, { url: field.value });
      box.replaceChildren();
      notice([`Connected ${data.provider}/${data.account}.`, ...(data.notes || [])].join(" "));
      await load();
    } catch (e) {
      // The flow is over (its state taken, expired or unknown): another paste cannot
      // finish it.
      const over = e.account !== undefined || e.code === "flow_expired" || e.code === "unknown_state";
      status.textContent = over
        ? `${e.message} This sign-in is over: press "Connect ${provider}" to start again.`
        : e.message;
    } finally {
      busy = false;
      button.disabled = false;
    }
  };
  button.addEventListener("click", finish);
  box.replaceChildren(
    el("p", {}, opened ? "A new tab opened at " : "Your browser did not open a new tab: open ", el("a", { href: authorizeUrl, target: "_blank", rel: "noopener noreferrer" }, provider),
      ` (for ${account || "default"}). After you approve, your browser will show a page that cannot be reached — copy its whole address and paste it here.`),
    el("div", { class: "row" }, el("label", { for: id }, "Address"), field, button),
    status);
  field.addEventListener("keydown", (ev) => { if (ev.key === "Enter") finish(); });
  field.focus();
}

async function disconnect(provider, account, missing, same) {
  const shared = same.length === 0 ? ""
    : ` ${same.join(", ")} ${same.length === 1 ? "is" : "are"} the same ${provider} account: at many providers revoking ends ${same.length === 1 ? "its" : "their"} access too, and oauthd then shows ${same.length === 1 ? "it" : "them"} as needing to be connected again.`;
  const what = missing
    ? `Delete ${provider}/${account}? ${provider} is no longer configured, so oauthd cannot revoke its tokens there; it only forgets them.`
    : `Disconnect ${provider}/${account}? oauthd revokes its tokens at ${provider} and forgets them.${shared}`;
  if (!confirm(what)) return;
  const path = `/ui/api/connections/${encodeURIComponent(provider)}/${encodeURIComponent(account)}`;
  try {
    const { data } = await api("DELETE", path);
    // The same account's other connections are refreshed now by oauthd, to see whether
    // the revocation ended their grant too: the list is read again to show it.
    const checking = same.length === 0 ? ""
      : ` oauthd is checking ${same.join(", ")}, the same ${provider} account, now: the list shows ${same.length === 1 ? "it" : "them"} as needing to be connected again if the revocation ended ${same.length === 1 ? "its" : "their"} grant too.`;
    notice((data && data.detail ? `Deleted ${provider}/${account}: ${data.detail}.` : `Disconnected ${provider}/${account}.`) + checking);
    await load();
    if (checking) for (const ms of [2000, 6000]) setTimeout(() => load().catch(() => {}), ms);
  } catch (e) {
    if (e.code !== "provider_unavailable") { notice(`Could not disconnect: ${e.message}`); return; }
    // The provider cannot be reached to revoke: offer to delete anyway, saying what stays.
    if (!confirm(`${provider} could not be reached to revoke the tokens. Delete oauthd's copy anyway? The grant then stays valid at ${provider} until it expires or you revoke it there.`)) {
      notice(`Not disconnected: ${provider} could not be reached.`);
      return;
    }
    try {
      const { data } = await api("DELETE", `${path}?force=true`);
      // 204 (no detail): the provider answered meanwhile, and the tokens were revoked.
      notice(data && data.detail
        ? `Deleted ${provider}/${account}: ${data.detail}.`
        : `Disconnected ${provider}/${account}: ${provider} answered after all, and its tokens were revoked there.`);
      await load();
    } catch (e2) { notice(`Could not disconnect: ${e2.message}`); }
  }
}

async function device(provider, account) {
  if (!replaceConfirmed(existingConnection(provider, account), true)) return;
  const box = document.getElementById(`device-${provider}`);
  try {
    const { data } = await api("POST", `/ui/api/device/${encodeURIComponent(provider)}`, { account });
    const link = el("a", { href: data.verification_uri_complete || data.verification_uri, target: "_blank", rel: "noopener" }, data.verification_uri);
    box.replaceChildren(el("p", {}, "On any device, open ", link, " and enter:"), el("p", { class: "code" }, data.user_code),
      el("p", { class: "hint", role: "status" }, "Waiting for approval… the code works until ", when(data.expires_at, "it expires"), "."));
    // Until the flow says how it ended: an answer that is not the flow's (oauthd
    // restarting, a proxy's 502 meanwhile) is polled past, up to a minute after the code
    // expired (by this browser's clock, at least 15 minutes: it may be ahead of oauthd's).
    const until = Date.now() + Math.max(Date.parse(data.expires_at) - Date.now(), 15 * 60_000) + 60_000;
    const poll = async () => {
      let resp = null;
      let body = null;
      try {
        resp = await fetch(`${BASE}/ui/api/device/${encodeURIComponent(provider)}/${data.id}`, { credentials: "same-origin" });
        body = await resp.json().catch(() => null);
      } catch { /* oauthd cannot be reached right now */ }
      if (resp && resp.status === 401) { signedOut(); return; }
      const gone = resp && resp.status === 404 && body && body.code;
      if (gone === "device_flow_not_found" || gone === "connection_not_found") {
        await load().catch(() => {});
        notice(gone === "connection_not_found"
          ? `Connected ${provider}/${account || "default"}, and it was deleted since.`
          : `Not connected: the flow for ${provider}/${account || "default"} is gone.`);
        return;
      }
      const ended = resp && resp.status !== 202 && body && typeof body.status === "string" && body.status !== "pending";
      if (!ended) {
        if (Date.now() < until) { setTimeout(poll, 3000); return; }
        notice(`Not connected: oauthd did not say how the flow for ${provider}/${account || "default"} ended.`);
        return;
      }
      await load().catch(() => {}); // redraws the providers, this box included
      // Connected as another account than it was: the flow's detail says so (not of a
      // connection deleted since, which the detail says instead).
      const said = body.connection && body.detail && body.detail !== "connected" ? ` ${body.detail}.` : "";
      notice(body.status === "connected"
        ? `Connected ${provider}/${account || "default"}.${said}`
        : `Not connected: ${body.status}${body.detail ? ` (${body.detail})` : ""}.`);
    };
    setTimeout(poll, 3000);
  } catch (e) { notice(`Could not start: ${e.message}`); }
}

$("#notify-test").addEventListener("click", notifyTest);
load().catch((e) => notice(`oauthd did not answer: ${e.message}`));
