//! OAuth client side: the provider catalogue and the protocol calls (code exchange,
//! refresh, revocation). Knows nothing of storage or HTTP serving.

pub mod flows;
pub mod id_token;
pub mod provider;

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

/// An HTTP client error's text without the URL it names (`error sending request for url
/// (…)`): these texts reach apps (a 503's detail), the connection's `last_error` and
/// events, and a URL may carry what its query holds. Where a caller names the endpoint,
/// it says which one.
fn without_url(mut text: String) -> String {
    if let Some(at) = text.find(" for url (") {
        if text.ends_with(')') {
            text.truncate(at);
        }
    }
    text
}

/// Reads a response body, refusing more than `limit` bytes (a provider answering with an
/// endless body must not exhaust memory).
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| with_causes(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the response is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
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
