//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `<webhook-id>.<webhook-timestamp>.<body>`, keyed with the bytes of a `whsec_<base64>`
//! secret, so receivers verify deliveries with the existing libraries.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

const PREFIX: &str = "whsec_";
/// Fewer key bytes than this are refused: the secret is all that stands between a
/// receiver and a forged "needs_reauth".
const MIN_KEY_BYTES: usize = 24;

/// A signing key, read from a target's `secret_file`.
pub struct SigningKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(…)")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>` (surrounding whitespace ignored). The error never repeats
    /// the text.
    pub fn parse(text: &str) -> Result<SigningKey, String> {
        let hint = "generate one with: echo \"whsec_$(head -c 32 /dev/urandom | base64)\"";
        let b64 = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("must hold a secret starting with {PREFIX} ({hint})"))?;
        let bytes = Zeroizing::new(
            STANDARD
                .decode(b64)
                .map_err(|_| format!("is not {PREFIX} followed by base64 ({hint})"))?,
        );
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "holds {} key bytes; at least {MIN_KEY_BYTES} are needed ({hint})",
                bytes.len()
            ));
        }
        Ok(SigningKey(bytes))
    }

    /// The `webhook-signature` header value for this delivery attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            // HMAC takes keys of any length.
            Err(_) => return String::new(),
        };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body.as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_example_does() {
        // The example in the Standard Webhooks specification.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn short_or_unprefixed_secrets_are_refused_without_being_repeated() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_c2hvcnQ=",
            "whsec_!!!",
        ] {
            let e = SigningKey::parse(bad).expect_err(bad);
            assert!(!e.contains(bad.trim_start_matches(PREFIX)), "{e}");
        }
    }
}
