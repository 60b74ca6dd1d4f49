//! OAuth client side: the provider catalogue and the protocol calls (code exchange,
//! refresh, revocation). Knows nothing of storage or HTTP serving.

pub mod flows;
pub mod id_token;
pub mod provider;
pub mod token_text;

pub use provider::{ClientAuth, Provider, ProviderConfig};

/// Text a provider sent (an error code or description): at most `max` characters, with
/// control, line-separator and bidirectional-override characters escaped, so that it can
/// neither forge log lines nor disguise itself wherever it is shown or stored.
pub fn provider_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars().take(max) {
        let unsafe_char = c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if unsafe_char {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An error's text followed by its causes' (each once). reqwest's own text says only
/// "error sending request for url (…)": whether the name did not resolve, the connection
/// was refused or TLS failed is in its sources, and that is what an operator needs.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = without_url(e.to_string());
    let mut source = e.source();
    while let Some(s) = source {
        let cause = without_url(s.to_string());
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = s.source();
    }
    text
}

/// An HTTP client error's text with the URL it names (`error sending request for url
/// (…)`) cut to its host and port: these texts reach apps (a 503's detail), the
/// connection's `last_error` and events, and a URL may carry what its query holds; the
/// host says which server failed (for an issuer's provider, one its metadata named).
fn without_url(mut text: String) -> String {
    const MARK: &str = " for url (";
    let Some(at) = text.find(MARK) else {
        return text;
    };
    let Some(url) = text[at + MARK.len()..].strip_suffix(')') else {
        return text;
    };
    let server = url::Url::parse(url).ok().and_then(|u| {
        let host = u.host_str()?.to_owned();
        Some(match u.port() {
            Some(port) => format!(" to {host}:{port}"),
            None => format!(" to {host}"),
        })
    });
    text.truncate(at);
    text.push_str(&server.unwrap_or_default());
    text
}

/// An endpoint's URL as a terminal command shows it: without a user or password, and its
/// query, if it has one, as `?…` (either may carry a credential).
pub fn url_shown(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let query = shown.query().is_some();
    shown.set_query(None);
    let mut text = shown.to_string();
    if query {
        text.push_str("?…");
    }
    text
}

/// Why a response body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed, or the time ran out, part-way.
    #[error("{0}")]
    Cut(String),
}

/// Reads a response body, refusing more than `limit` bytes (a provider answering with an
/// endless body must not exhaust memory).
pub async fn read_body(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Cut(with_causes(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `read_body`, its error as text.
pub async fn read_limited(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    read_body(resp, limit).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_url_shown_has_no_user_password_or_query() {
        let url = url::Url::parse("https://cid:pw-s3cret@auth.example.net/t?key=q-s3cret").unwrap();
        assert_eq!(super::url_shown(&url), "https://auth.example.net/t?…");
        let plain = url::Url::parse("http://127.0.0.1:9/token").unwrap();
        assert_eq!(super::url_shown(&plain), "http://127.0.0.1:9/token");
    }

    #[test]
    fn an_http_error_names_the_server_and_not_the_url() {
        let said = |t: &str| super::without_url(t.to_owned());
        assert_eq!(
            said("error sending request for url (http://127.0.0.1:9/token?tenant=s3cret)"),
            "error sending request to 127.0.0.1:9"
        );
        assert_eq!(
            said("error sending request for url (https://auth.example.net/oauth/token)"),
            "error sending request to auth.example.net"
        );
        assert_eq!(said("connection refused"), "connection refused");
    }

    #[test]
    fn provider_text_cannot_start_a_log_line() {
        let t = super::provider_text("bad\n2026-12-01T00:00:00Z ERROR forged\r\u{202e}x", 300);
        assert!(
            !t.contains('\n') && !t.contains('\r') && !t.contains('\u{202e}'),
            "{t}"
        );
        assert!(t.starts_with("bad\\n2026"), "{t}");
        assert_eq!(super::provider_text("ééé", 2), "éé");
    }
}
