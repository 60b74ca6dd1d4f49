//! `GET /callback/{provider}`: where providers send the browser back. Public (the state
//! is the credential); answers with a page for a person, or 303 to an allowed return_to.

use super::confirm::{flow_cookie, flow_cookie_name, FlowCookie};
use super::pages::{escape, page, page_for};
use super::AppState;
use crate::broker::{Browser, CallbackError, CallbackQuery, Connected, Finished, Held};
use crate::secret::StateValue;
use actix_web::cookie::Cookie;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

/// One click to start again: a CSRF-protected form when the browser is signed in,
/// else a link to the page (which asks to sign in first). The label names the account
/// it connects: the flow may have been started by an app, for an account of its own, and
/// an unlabelled button would let it have the admin's grant for a click.
fn retry_button(
    app: &AppState,
    csrf: Option<&str>,
    provider: &str,
    account: &str,
    label: &str,
) -> String {
    let label = format!("{label} (account {account})");
    match csrf {
        Some(token) => format!(
            "<form method=\"post\" action=\"{b}/connect/{p}\"><input type=\"hidden\" name=\"account\" value=\"{a}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{t}\"><button type=\"submit\">{l}</button></form>",
            b = escape(&app.base_path),
            p = escape(provider),
            a = escape(account),
            t = escape(token),
            l = escape(&label)
        ),
        // Not signed in to oauthd: most likely someone an app sent here, for whom the
        // admin page (behind its sign-in) is no way on.
        None => format!(
            "<p>If an app sent you here, go back to it and start again there.</p>\
             <p>oauthd's administrator can start again here: \
             <a class=\"button\" href=\"{}\">{}</a></p>",
            escape(&app.broker.reconnect_url(provider, account)),
            escape(&label)
        ),
    }
}

pub async fn callback(
    app: web::Data<AppState>,
    provider: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    let base = app.base_path.as_str();
    if let Err(e) = app.public_route_hit(&req) {
        return super::pages::too_many(base, &e);
    }
    if req.query_string().is_empty() {
        return page(
            base,
            400,
            "Nothing to finish here",
            "<p>A provider sends the browser to this address after a sign-in, with what the sign-in gave. A reload of the page that said \"Connected\" (or the back button to it) shows this: the connection made then stands, and oauthd's page lists it. A reload of a page that asked whether to connect an account for an app shows it too: if its button was not pressed, nothing was connected; go back to the app and start again there.</p>",
        );
    }
    let query = match web::Query::<CallbackQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(_) => return page(
            base,
            400,
            "Malformed answer",
            "<p>The provider's answer could not be read. Start connecting again from oauthd.</p>",
        ),
    };
    // Asked before anything is used up: a store that cannot say whether this browser is
    // signed in must not make the operator's flow read as finished elsewhere.
    let csrf = match super::ui::csrf_for(&app, &req).await {
        Ok(csrf) => csrf,
        Err(e) => return super::pages::problem_page(base, "Storage unavailable", &e),
    };
    let csrf = csrf.as_deref();
    // The cookie an app's flow gave the browser that confirmed it (none for the operator's
    // flows): read here, and cleared once the flow is used up, whatever the outcome. A
    // store that did not answer used nothing up: the cookie stays for the reload.
    let state = query.state.as_deref().and_then(StateValue::parse);
    let cookie = state
        .as_ref()
        .and_then(|state| req.cookie(&flow_cookie_name(app.secure_cookies, state)));
    let presented = cookie.as_ref().map(Cookie::value);
    let finished = app
        .broker
        .finish_callback(
            &provider,
            query,
            Browser::Cookie {
                flow: presented,
                signed_in: csrf.is_some(),
            },
        )
        .await;
    let used_up =
        !matches!(&finished, Err(e) if matches!(e.unwrapped().0, CallbackError::Storage(_)));
    // What the provider sent (the code, the state) is used up: it leaves the address bar
    // and the history (synced to other devices by some browsers). A page whose flow stays
    // open keeps it: one that asks for a reload (the store did not answer), for a visit
    // once signed in, or for the provider's other address to be pasted.
    let stays_open = matches!(&finished, Err(e) if matches!(
        e.unwrapped().0,
        CallbackError::Storage(_) | CallbackError::NotSignedIn { .. } | CallbackError::PasteOnly { .. }
    ));
    let forget = if !stays_open {
        format!(
            "<script src=\"{}/static/forget-address.js\"></script>",
            escape(base)
        )
    } else {
        String::new()
    };
    let mut resp = match finished {
        Ok(Finished::Connected(connected)) => connected_page(base, connected, &forget),
        Ok(Finished::Held(held)) => held_page(&app, &held, &forget),
        Err(e) => failed(&app, csrf, &provider, e, &forget),
    };
    if let (Some(state), Some(_), true) = (state, cookie, used_up) {
        // The flow's cookie and the confirmation page's mark: the flow is over. A cookie
        // that cannot be written as a header is left to expire on its own.
        for which in [FlowCookie::Flow, FlowCookie::Mark] {
            let gone = flow_cookie(&app, which, &provider, &state, String::new(), None);
            let _ = resp.add_cookie(&gone);
        }
    }
    resp
}

/// What the browser gets once a flow connected: a `303` to the app's allowed `return_to`,
/// else the page that says so.
fn connected_page(base: &str, connected: Connected, forget: &str) -> HttpResponse {
    let Connected {
        provider,
        account,
        return_to,
        by_app,
        caution,
        identity,
        same_account_as,
        replaced,
    } = connected;
    if let Some(to) = return_to {
        return HttpResponse::SeeOther()
            .insert_header((header::LOCATION, to))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish();
    }
    let notes = Notes {
        provider: &provider,
        account: &account,
        by_app,
        caution: caution.as_deref(),
        same_account_as: &same_account_as,
        replaced: replaced.as_ref(),
    };
    page_for(
        by_app,
        base,
        200,
        "Connected",
        &format!(
            "<p><strong>{}</strong> account <strong>{}</strong> is connected{}. Apps with an API key can now fetch its access token from oauthd; you can close this tab.</p>{}{forget}",
            escape(&provider),
            escape(&account),
            signed_in_as(&provider, &identity, Words::Html),
            notes.said(Words::Html).concat()
        ),
    )
}

/// How a connect's notes are written: in its page (HTML), or in the answer to the page's
/// paste (text, which the page shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Words {
    Html,
    Text,
}

impl Words {
    /// A name set apart (in bold on a page).
    fn strong(self, text: &str) -> String {
        match self {
            Words::Html => format!("<strong>{}</strong>", escape(text)),
            Words::Text => text.to_owned(),
        }
    }

    /// Text as it is (escaped on a page).
    fn plain(self, text: &str) -> String {
        match self {
            Words::Html => escape(text),
            Words::Text => text.to_owned(),
        }
    }

    /// A caution: a paragraph of its own on a page, with its label in bold.
    fn caution(self, label: &str, body: &str) -> String {
        match self {
            Words::Html => format!("<p class=\"caution\"><strong>{label}</strong> {body}</p>"),
            Words::Text => format!("{label}: {body}"),
        }
    }
}

/// What a person should know of a connect that went through: the account it replaced,
/// the other connections that are the same account, and a caution (no refresh token).
pub(super) struct Notes<'a> {
    pub provider: &'a str,
    pub account: &'a str,
    pub by_app: bool,
    pub caution: Option<&'a str>,
    pub same_account_as: &'a [String],
    pub replaced: Option<&'a crate::broker::Replaced>,
}

impl Notes<'_> {
    /// Each note, written `w`'s way (none when there is nothing to know).
    pub(super) fn said(&self, w: Words) -> Vec<String> {
        let mut notes = Vec::new();
        notes.extend(replaced_note(
            self.provider,
            self.account,
            self.replaced,
            self.by_app,
            w,
        ));
        notes.extend(same_account(
            self.provider,
            self.same_account_as,
            self.by_app,
            w,
        ));
        if let Some(c) = self.caution {
            notes.push(w.caution("But", &format!("{}.", w.plain(c))));
        }
        notes
    }
}

/// The page of an app's flow back from the provider: nothing is connected until the
/// person presses its button (`finish`), which carries the value only this page holds.
fn held_page(app: &AppState, held: &Held, forget: &str) -> HttpResponse {
    let action = format!("{}/callback/{}/finish", app.base_path, held.provider);
    let body = format!(
        "<p>You signed in at <strong>{p}</strong>. An app using oauthd's API key \
         <strong>{key}</strong> asks to connect that account to oauthd, as account \
         <strong>{a}</strong>: apps whose API keys reach it will be able to fetch its access \
         tokens and act as you at {p} until it is disconnected in oauthd.</p>\
         <p>Connect it only if you started this yourself, in that app. Otherwise close this \
         page: nothing has been connected.</p>\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"held\" value=\"{value}\">\
         <button type=\"submit\" data-after-a-moment>Connect {p} account {a}</button></form>\
         <p>Press it now: the sign-in's code from {p} expires within minutes (a minute \
         at some providers).</p>{forget}\
         <script src=\"{base}/static/press-after-a-moment.js\"></script>",
        p = escape(&held.provider),
        key = escape(&held.key_name),
        a = escape(&held.account),
        action = escape(&action),
        value = escape(held.value.expose()),
        base = escape(&app.base_path),
    );
    let mut resp = page_for(
        true,
        &app.base_path,
        200,
        &format!("Connect {}?", held.provider),
        &body,
    );
    // Its form's `Origin` must name oauthd (`no-referrer` would make it `null`).
    resp.headers_mut().insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    resp
}

#[derive(serde::Deserialize)]
pub struct FinishForm {
    held: String,
}

/// `POST /callback/{provider}/finish`: the held page's button. Only from oauthd's own page,
/// with the value that page held.
pub async fn finish(
    app: web::Data<AppState>,
    provider: web::Path<String>,
    req: HttpRequest,
    form: Option<web::Form<FinishForm>>,
) -> HttpResponse {
    let base = app.base_path.as_str();
    if let Err(e) = app.public_route_hit(&req) {
        return super::pages::too_many(base, &e);
    }
    if !super::confirm::from_own_page(&req, &app.broker.public_origin()) {
        return page_for(
            true,
            base,
            403,
            "Please connect from oauthd's page",
            "<p>This request did not come from oauthd's page. Go back to the app and start again there.</p>",
        );
    }
    let Some(value) = form.and_then(|f| StateValue::parse(&f.held)) else {
        return failed(
            &app,
            None,
            &provider,
            CallbackError::ByApp(Box::new(CallbackError::NoState)),
            "",
        );
    };
    match app.broker.finish_held(&provider, &value).await {
        Ok(connected) => connected_page(base, connected, ""),
        Err(e) => failed(&app, None, &provider, e, ""),
    }
}

/// The caution for a reconnect that made the connection another account at the provider
/// than it was: the apps that read it get the new one's tokens from now on. A person an
/// app sent here is not told who it was (someone else, maybe).
fn replaced_note(
    provider: &str,
    account: &str,
    replaced: Option<&crate::broker::Replaced>,
    by_app: bool,
    w: Words,
) -> Option<String> {
    let crate::broker::Replaced { was, grant } = replaced?;
    let before = if by_app {
        format!(" as another account at {}", w.strong(provider))
    } else {
        signed_in_as(provider, was, w)
    };
    Some(w.caution(
        "Changed",
        &format!(
            "{a} was connected{before}: it is another account now, and the apps that read {a} get this account's tokens from now on. The account it was: {grant}. If you meant the account it was, sign out at {p}, then connect {a} again.",
            a = w.plain(account),
            p = w.plain(provider),
            grant = w.plain(&grant.describe(provider, !by_app))
        ),
    ))
}

/// The caution for a connection that is the same account at the provider as `others`:
/// the browser was still signed in there, so the person may have meant another account.
/// An app's flow (whose key may reach only some accounts) is not told the others' names.
fn same_account(provider: &str, others: &[String], by_app: bool, w: Words) -> Option<String> {
    let named = match others {
        [] => return None,
        _ if by_app => format!("{} other connection(s)", others.len()),
        _ => others
            .iter()
            .map(|a| w.strong(a))
            .collect::<Vec<_>>()
            .join(", "),
    };
    Some(w.caution(
        "Note",
        &format!(
            "this is the same account at {p} as {named}: the browser was most likely still signed in there. To connect another account, sign out at {p} first, then connect again.",
            p = w.plain(provider)
        ),
    ))
}

/// ", signed in at PROVIDER as NAME (EMAIL)", as far as the provider said who: a browser
/// signed in there already connects that account without a word. A name is one its user
/// chose, and may look like anyone's: without an email (kept only when verified) the
/// provider's id for the account follows it.
fn signed_in_as(provider: &str, who: &crate::store::AccountIdentity, w: Words) -> String {
    let (name, sub) = (who.name.as_deref(), who.sub.as_deref());
    let shown = match (name.or(sub), who.email.as_deref()) {
        (Some(name), Some(email)) if name != email => format!("{name} ({email})"),
        (_, Some(email)) => email.to_owned(),
        (Some(name), None) => match sub.filter(|sub| *sub != name) {
            Some(sub) => format!("{name} (user id {sub})"),
            None => name.to_owned(),
        },
        (None, None) => return String::new(),
    };
    format!(
        ", signed in at {} as {}",
        w.strong(provider),
        w.strong(&shown)
    )
}
/// The page for a callback that stored nothing: the only place that words these. A flow
/// an app started is started again from the app: a button here would skip the page that
/// asks the person to confirm.
pub(super) fn failed(
    app: &AppState,
    csrf: Option<&str>,
    provider: &str,
    e: CallbackError,
    tail: &str,
) -> HttpResponse {
    use CallbackError::*;
    let base = app.base_path.as_str();
    let whole = &e;
    let (e, by_app) = e.unwrapped();
    let again = |account: &str, label: &str| {
        if by_app {
            "<p>An app started this sign-in: go back to it and start again there.</p>".to_owned()
        } else {
            retry_button(app, csrf, provider, account, label)
        }
    };
    // Status and title are the paste-back API's too (`wording`); the body is the page's.
    let (status, title, detail) = wording(provider, whole);
    let body = match e {
        Expired { account } => format!(
            "<p>Connecting <strong>{}</strong> ({}) took longer than the {} oauthd keeps a sign-in open, so nothing was stored.</p>{}",
            escape(provider),
            escape(account),
            escape(&app.broker.flow_ttl_text(provider, account, by_app)),
            again(account, "Start again")
        ),
        Denied {
            account,
            description,
        } => format!(
            "<p>{} reported that access was not granted{}. Nothing was stored.</p>{}",
            escape(provider),
            if description.is_empty() {
                String::new()
            } else {
                format!(" (<q>{}</q>)", escape(description))
            },
            again(account, "Try again")
        ),
        // Nothing was used up (the state is taken in the same write that would fail).
        Storage(message) => format!(
            "<p>{}</p><p>Nothing was used up: reload this page in a few seconds to finish connecting.</p>",
            escape(message)
        ),
        _ => {
            let button = e
                .retry_account()
                .map(|a| again(a, "Start again"))
                .unwrap_or_default();
            format!("<p>{}</p>{button}", escape(&detail))
        }
    };
    let mut resp = page_for(by_app, base, status, title, &format!("{body}{tail}"));
    if let Some(secs) = super::problem::callback_retry_after(whole) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    resp
}

/// Status, title and plain-text detail of a callback that stored nothing: the page's
/// words, and the `detail` of the paste-back API's problem.
pub fn wording(provider: &str, e: &CallbackError) -> (u16, &'static str, String) {
    let (title, detail) = e.words(provider);
    (super::problem::callback_status(e), title, detail)
}

#[cfg(test)]
mod tests {
    use super::signed_in_as;
    use crate::store::AccountIdentity;

    fn who(sub: Option<&str>, email: Option<&str>, name: Option<&str>) -> AccountIdentity {
        AccountIdentity {
            sub: sub.map(str::to_owned),
            email: email.map(str::to_owned),
            name: name.map(str::to_owned),
        }
    }

    /// A name that looks like someone else's address is followed by the account's id when
    /// no verified email says who it is.
    #[test]
    fn a_chosen_name_is_shown_with_what_identifies_the_account() {
        let said = |w| signed_in_as("peer", &w, super::Words::Html);
        assert_eq!(
            said(who(Some("81726"), None, Some("operator@corp.example"))),
            ", signed in at <strong>peer</strong> as <strong>operator@corp.example (user id 81726)</strong>"
        );
        assert_eq!(
            said(who(Some("81726"), Some("a@b.example"), Some("Al"))),
            ", signed in at <strong>peer</strong> as <strong>Al (a@b.example)</strong>"
        );
        assert_eq!(
            said(who(Some("alice"), None, Some("alice"))),
            ", signed in at <strong>peer</strong> as <strong>alice</strong>"
        );
        assert_eq!(
            said(who(Some("81726"), None, None)),
            ", signed in at <strong>peer</strong> as <strong>81726</strong>"
        );
        assert_eq!(said(who(None, None, None)), "");
    }
}
