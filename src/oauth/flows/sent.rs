//! What a request to a provider sent (the client secret, the grant), kept out of the
//! provider's error texts, whatever form they echo it in.

use crate::oauth::provider::Provider;

/// What a request to a provider sent that must not come back in an error: the client
/// secret and the grant (a code and its verifier, a refresh token, a device code).
pub(super) struct Sent<'a>(Vec<&'a str>, Option<String>);

/// What an HTTP Basic `Authorization` header carries for the client (base64 of the
/// form-encoded id and secret), when it has a secret.
fn basic_credentials(provider: &Provider) -> Option<String> {
    use base64::Engine;
    let secret = provider.client_secret.as_ref()?;
    let pair = format!(
        "{}:{}",
        form_encode(&provider.client_id),
        form_encode(secret)
    );
    Some(base64::engine::general_purpose::STANDARD.encode(pair))
}

impl<'a> Sent<'a> {
    pub(super) fn new(provider: &'a Provider, grant: &[&'a str]) -> Sent<'a> {
        let secret = provider.client_secret.iter().map(|s| s.as_str());
        Sent(
            secret.chain(grant.iter().copied()).collect(),
            basic_credentials(provider),
        )
    }

    /// What was sent, long enough to be told apart from the letters of a text.
    fn secrets(&self) -> impl Iterator<Item = &str> {
        // Shorter values are any text's letters (and no secret at all).
        let basic = self.1.iter().map(String::as_str);
        self.0
            .iter()
            .copied()
            .chain(basic)
            .filter(|s| s.len() >= SHORTEST_SECRET)
    }

    /// A provider's error text, bounded and safe to log (`provider_text`), with what was
    /// sent taken out (as sent, and form-encoded): some servers echo it ("Invalid refresh
    /// token: <value>"), and this text is logged, stored with the connection and shown
    /// to apps and on the page. A text that still holds it in another form (encoded
    /// otherwise, cut, split by other characters) is not kept at all (`echoes`).
    pub(super) fn text(&self, text: &str, max: usize) -> String {
        // Only what is kept is looked through, before control characters are written
        // out (their escapes would part a secret's characters).
        let kept = kept(&self.strip(text), max);
        if self.echoes(&kept) {
            return WITHHELD.to_owned();
        }
        crate::oauth::provider_text(&kept, max)
    }

    /// `text` with what was sent, as sent and form-encoded, said as `[redacted]`.
    pub(super) fn strip(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in self.secrets() {
            for form in [secret.to_string(), form_encode(secret)] {
                if text.contains(&form) {
                    text = text.replace(&form, "[redacted]");
                }
            }
        }
        text
    }

    /// Whether `text` holds a run of `ECHO_RUN` letters and digits of something sent
    /// (all of it, if shorter), read case-blind and past any other characters, after
    /// percent- and JSON-unescaping, or of its base64 or hex. A short secret counts
    /// whole (a client secret of 7 characters came back in full); its encodings only
    /// from `ECHO_RUN` on (shorter, they are any text's letters).
    pub(super) fn echoes(&self, text: &str) -> bool {
        let mut runs = std::collections::HashSet::new();
        let mut lengths = std::collections::BTreeSet::new();
        for secret in self.secrets() {
            for (nth, form) in echo::forms(secret).iter().enumerate() {
                let plain = echo::plain(form.as_bytes());
                let least = if nth == 0 { SHORTEST_SECRET } else { ECHO_RUN };
                if plain.len() < least {
                    continue;
                }
                let run = plain.len().min(ECHO_RUN);
                lengths.insert(run);
                runs.extend(plain.windows(run).map(<[u8]>::to_vec));
            }
        }
        let plain = echo::plain(text.as_bytes());
        lengths
            .iter()
            .any(|&run| plain.windows(run).any(|w| runs.contains(w)))
    }
}

/// The first `max` characters of `text`: what a provider's text keeps of it.
pub(super) fn kept(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// How much of an OAuth error's code and description is kept.
pub(super) const CODE_MAX: usize = 64;
pub(super) const DESCRIPTION_MAX: usize = 300;

/// Said instead of a provider's text that still holds what oauthd sent it.
pub(super) const WITHHELD: &str =
    "[not kept: the provider's text held a secret oauthd sent it, encoded or cut]";

/// How long a run of a secret's letters and digits `Sent::echoes` looks for: a random
/// secret's run of 8 is in no provider's own words (one chance in about 10^12 for each
/// pair of places), and a provider that echoes a secret cut short ("refresh token
/// e0RvQk1x... unknown") gives at least that much of it. (12 let cuts of 8 to 11 through.)
const ECHO_RUN: usize = 8;

/// The shortest value sent that is looked for in a provider's text, as sent and whole.
const SHORTEST_SECRET: usize = 4;

/// The forms a secret may come back in, and texts reduced to what those forms share.
mod echo {
    use base64::Engine;

    /// The secret, its hex, and its base64 at each of the three alignments it can have
    /// inside a longer encoded value (the characters its neighbours share left out).
    pub fn forms(secret: &str) -> Vec<String> {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        let mut forms = vec![secret.to_owned(), hex];
        for (lead, skip) in [(0usize, 0usize), (1, 2), (2, 3)] {
            let mut bytes = vec![0u8; lead];
            bytes.extend_from_slice(secret.as_bytes());
            let encoded = b64.encode(&bytes);
            let end = encoded.len().saturating_sub(2);
            forms.push(encoded.get(skip..end).unwrap_or_default().to_owned());
        }
        forms
    }

    /// `text`'s ASCII letters (lower-cased) and digits only, after percent escapes
    /// (twice, for a value encoded twice) and JSON's `\uXXXX` are undone.
    pub fn plain(text: &[u8]) -> Vec<u8> {
        let once = unescape(text, b'%', 2);
        let twice = unescape(&once, b'%', 2);
        unicode_escapes(&twice)
            .into_iter()
            .filter(u8::is_ascii_alphanumeric)
            .map(|b| b.to_ascii_lowercase())
            .collect()
    }

    /// `mark` followed by `digits` hex digits, read as the byte they name.
    fn unescape(text: &[u8], mark: u8, digits: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while let Some(&b) = text.get(i) {
            let hex = text.get(i + 1..i + 1 + digits);
            match hex.and_then(hex_value) {
                Some(v) if b == mark => {
                    out.push(u8::try_from(v).unwrap_or(b'?'));
                    i += 1 + digits;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    /// JSON's `\uXXXX`: the ASCII ones as their byte, the others left out.
    fn unicode_escapes(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while let Some(&b) = text.get(i) {
            let escaped = b == b'\\' && text.get(i + 1) == Some(&b'u');
            match text.get(i + 2..i + 6).and_then(hex_value) {
                Some(v) if escaped => {
                    if let Ok(ascii) = u8::try_from(v) {
                        out.push(ascii);
                    }
                    i += 6;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn hex_value(digits: &[u8]) -> Option<u32> {
        let text = std::str::from_utf8(digits).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(text, 16).ok()
    }
}

/// RFC 6749 §2.3.1: client credentials in HTTP Basic are form-urlencoded first.
pub(super) fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::answer::provider_error;
    use super::super::FlowError;
    use super::*;
    use crate::oauth::ProviderConfig;

    /// A provider "p" of client "client" with `secret`, at provider.test.
    pub(in crate::oauth::flows) fn provider_with_secret(secret: &str) -> Provider {
        let config = ProviderConfig {
            authorization_url: Some("https://provider.test/authorize".into()),
            token_url: Some("https://provider.test/token".into()),
            client_id: Some("client".into()),
            client_secret: Some(secret.into()),
            ..Default::default()
        };
        Provider::from_config("p", &config).unwrap()
    }

    fn echoing_provider() -> Provider {
        provider_with_secret("s3cret/with+signs~\"q\\x")
    }

    /// A provider's text that holds what was sent in another form than as sent or
    /// form-encoded (each of these reached the log, the store, events and apps) is not
    /// kept; its own words are, and a secret's known code still counts.
    #[test]
    fn a_providers_text_holding_a_secret_encoded_or_cut_is_not_kept() {
        use base64::Engine;
        let provider = echoing_provider();
        let refresh = "rt-Zx9_Qw7.Lm3-Pk8~Vb2/Nc5+Hd1=";
        let access = "at-Gh4Jk6Lm8Np0Qr2St4Uv6Wx8";
        let sent = Sent::new(&provider, &[refresh, access]);
        let secret = provider.client_secret.as_deref().unwrap().to_owned();
        let every_byte: String = refresh.bytes().map(|b| format!("%{b:02X}")).collect();
        let lower_hex: String = refresh.bytes().map(|b| format!("%{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(refresh);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(refresh);
        let zero_width: String = refresh.chars().flat_map(|c| [c, '\u{200b}']).collect();
        let json_escaped = serde_json::to_string(&secret).unwrap();
        let unicode_escaped: String = refresh
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        for echoed in [
            every_byte,
            lower_hex,
            refresh.replace('~', "%7E").replace('/', "%2F"),
            b64.clone(),
            b64url,
            b64.to_uppercase(),
            format!("xx{}", &b64[4..]),
            refresh[..refresh.len() - 3].to_owned(),
            refresh.to_uppercase(),
            zero_width,
            json_escaped.clone(),
            unicode_escaped,
            format!("{secret:?}"),
            access.to_lowercase(),
            base64::engine::general_purpose::STANDARD.encode(&secret),
            refresh.bytes().map(|b| format!("{b:02x}")).collect(),
        ] {
            let text = sent.text(&format!("bad token {echoed} given"), 300);
            assert_eq!(text, WITHHELD, "{echoed}");
        }
        // The access token a refresh replaces, as it is: taken out as what was sent is.
        assert_eq!(
            sent.text(&format!("token {access} expired"), 300),
            "token [redacted] expired"
        );
        // Split between the code and the description.
        let (head, tail) = refresh.split_at(14);
        match provider_error(head, Some(tail), &sent) {
            FlowError::Rejected { code, description } => {
                assert_eq!(
                    (code.as_str(), description.as_str()),
                    ("not_kept", WITHHELD)
                );
            }
            other => panic!("{other:?}"),
        }
        match provider_error(
            "invalid_grant",
            Some(&format!("token {}", &refresh[2..])),
            &sent,
        ) {
            FlowError::InvalidGrant(description) => assert_eq!(description, WITHHELD),
            other => panic!("{other:?}"),
        }
        // A long explanation keeps its code and its first 300 characters.
        let long = format!(
            "AADSTS700082: The refresh token has expired. {}",
            "Trace ID: 0f1e2d3c. ".repeat(30)
        );
        match provider_error("invalid_request", Some(&long), &sent) {
            FlowError::Rejected { code, description } => {
                assert_eq!(code, "invalid_request");
                assert!(description.starts_with("AADSTS700082"), "{description}");
            }
            other => panic!("{other:?}"),
        }
        // The provider's own words stay.
        for words in [
            "The refresh token is invalid, expired or revoked",
            "Invalid client secret provided for client 'client'",
            "AADSTS70008: The provided authorization code or refresh token has expired due to inactivity. Trace ID: 4f2b9c1e-7d3a-4e8b-9c5f-2a1b3c4d5e6f",
        ] {
            assert_eq!(sent.text(words, 300), words);
        }
    }

    #[test]
    fn a_providers_error_text_loses_what_was_sent_as_sent_and_form_encoded() {
        let provider = provider_with_secret("s3cret/with+signs");
        let sent = Sent::new(&provider, &["device-code-0123", "abc"]);
        let basic = basic_credentials(&provider).unwrap();
        let text = sent.text(
            &format!("code device-code-0123 from client s3cret%2Fwith%2Bsigns (s3cret/with+signs) is abc; Basic {basic}"),
            300,
        );
        assert_eq!(
            text,
            "code [redacted] from client [redacted] ([redacted]) is abc; Basic [redacted]"
        );
    }

    /// A secret cut short in a provider's text (its first 8 to 11 characters came back
    /// whole), and a short client secret echoed whole (7 characters), are not kept: the
    /// first reached the log, the store, events and apps, the second as it was.
    #[test]
    fn a_secret_cut_short_or_a_short_one_is_not_kept() {
        let config = ProviderConfig {
            authorization_url: Some("https://provider.test/authorize".into()),
            token_url: Some("https://provider.test/token".into()),
            client_id: Some("client".into()),
            client_secret: Some("Sh0rt7x".into()),
            ..Default::default()
        };
        let provider = Provider::from_config("p", &config).unwrap();
        let refresh = "e0RvQk1xqo-0mL-0B5Tz9Wv3Ys7Ua1";
        let sent = Sent::new(&provider, &[refresh]);
        for cut in [8, 9, 11] {
            let text = sent.text(
                &format!("refresh token {}... unknown", &refresh[..cut]),
                300,
            );
            assert_eq!(text, WITHHELD, "{cut}");
        }
        // 9 of its letters and digits, parted by dashes.
        let text = sent.text("refresh token xqo-0mL-0B5 unknown", 300);
        assert_eq!(text, WITHHELD);
        let text = sent.text("client secret Sh0rt7x does not match", 300);
        assert_eq!(text, "client secret [redacted] does not match");
        let text = sent.text("client secret S-h-0-r-t-7-x does not match", 300);
        assert_eq!(text, WITHHELD);
        // The provider's own words stay.
        let words = "The refresh token is invalid, expired or revoked (client 'client')";
        assert_eq!(sent.text(words, 300), words);
    }
}
