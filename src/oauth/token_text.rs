//! What a token, its type and its scopes may hold to be stored and handed out: one rule
//! for the tokens a provider sends and the tokens an app imports. Messages name the
//! field, never its value.

/// Why `token` (the field `name`) cannot be handed out, if it cannot. A token goes into
/// an `Authorization` header, the apps' and the proxy's: visible ASCII only (a line break
/// in one is a header injected; RFC 6750's b64token is narrower still, but providers'
/// tokens are not all b64tokens), and something (an empty one authorizes nothing).
pub fn token_fault(name: &str, token: &str) -> Option<String> {
    if token.is_empty() {
        return Some(format!("{name} is empty"));
    }
    (!token.chars().all(|c| c.is_ascii_graphic())).then(|| {
        format!(
            "{name} holds a character other than visible ASCII (a space, a line break, a control character)"
        )
    })
}

/// Why a token type cannot be sent as `Authorization: <token_type> <token>`, if it
/// cannot: it must be an HTTP token (RFC 9110 `tchar`s), of at most 64 bytes.
pub fn token_type_fault(token_type: &str) -> Option<&'static str> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if token_type.len() > 64 {
        Some("token_type is longer than 64 bytes")
    } else if token_type.is_empty() || !token_type.chars().all(tchar) {
        Some("token_type must be a word such as Bearer (letters, digits, and !#$%&'*+-.^_`|~)")
    } else {
        None
    }
}

/// Why a scope (one, or several apart by spaces) cannot be kept, if it cannot: scopes are
/// shown on the page, in the API and in the terminal.
pub fn scope_fault(scope: &str) -> Option<&'static str> {
    scope
        .chars()
        .any(char::is_control)
        .then_some("scope holds a control character")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_fit_for_a_header_pass_and_others_are_named_without_their_value() {
        assert_eq!(token_fault("access_token", "ya29.a0-_~+/="), None);
        for bad in ["", "at x", "at\r\nX-Injected: 1", "at\u{7f}", "at\u{e9}"] {
            let fault = token_fault("access_token", bad).expect(bad);
            assert!(fault.starts_with("access_token "), "{fault}");
            assert!(bad.is_empty() || !fault.contains(bad), "{fault}");
        }
        assert_eq!(token_type_fault("Bearer"), None);
        assert_eq!(token_type_fault("DPoP"), None);
        for bad in ["", "Bearer\r\nX: 1", "Bear er", &"b".repeat(65)] {
            assert!(token_type_fault(bad).is_some(), "{bad:?}");
        }
        assert_eq!(scope_fault("openid email r:devices:*"), None);
        assert!(scope_fault("openid\u{1b}[2J").is_some());
    }
}
