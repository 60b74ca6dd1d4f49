//! A state's `data` at rest: sealed by the vault (AES-256-GCM), so a copy of the database
//! file or of Redis holds no app's data in clear (apps keep PKCE verifiers, 2FA challenges
//! and session details there).
//!
//! Stored as text, `sealed:` then the sealed value in base64, where both backends kept the
//! JSON. The associated data names the state's stored key and namespace: sealed data copied
//! into another state's row fails to open, so a state whose value an attacker knows cannot
//! be made to answer another state's data. Data stored before it was sealed is JSON, which
//! never starts with `s`, and is read as it is.

use crate::secret::SecretHash;
use crate::vault::{sealed_key_id, Sealer, VaultError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

const PREFIX: &str = "sealed:";

fn aad(key_hash: &SecretHash, namespace: &str) -> String {
    const NAME: &str = "state-data:";
    let mut out = String::with_capacity(NAME.len() + 64 + 1 + namespace.len());
    out.push_str(NAME);
    key_hash.push_hex(&mut out);
    out.push(':');
    out.push_str(namespace);
    out
}

/// The text to store for a state's JSON `data`.
pub fn seal(
    vault: &impl Sealer,
    key_hash: &SecretHash,
    namespace: &str,
    json: &str,
) -> Result<String, VaultError> {
    let sealed = vault.seal(&aad(key_hash, namespace), json.as_bytes())?;
    let mut out = String::with_capacity(PREFIX.len() + sealed.len().div_ceil(3) * 4);
    out.push_str(PREFIX);
    STANDARD.encode_string(&sealed, &mut out);
    Ok(out)
}

/// The JSON a state's stored data holds. Data stored before sealing comes back as it is.
pub fn open(
    vault: &impl Sealer,
    key_hash: &SecretHash,
    namespace: &str,
    stored: &str,
) -> Result<String, VaultError> {
    let Some(encoded) = stored.strip_prefix(PREFIX) else {
        return Ok(stored.to_owned());
    };
    let sealed = STANDARD.decode(encoded).map_err(|_| VaultError::Corrupt)?;
    let plain = vault.open(&aad(key_hash, namespace), &sealed)?;
    std::str::from_utf8(&plain)
        .map(str::to_owned)
        .map_err(|_| VaultError::Corrupt)
}

/// The id of the vault key stored data was sealed with; `None` for data stored before
/// sealing.
pub fn key_id(stored: &str) -> Option<String> {
    let encoded = stored.strip_prefix(PREFIX)?;
    // The header (version, key id, nonce) is the first 17 bytes: 24 characters hold 18.
    let head = Zeroizing::new(STANDARD.decode(encoded.get(..24)?).ok()?);
    sealed_key_id(&head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Vault;

    fn vault() -> Vault {
        Vault::from_text(&crate::vault::generate_key_text().expect("key")).expect("vault")
    }

    #[test]
    fn data_opens_only_for_the_state_it_was_sealed_for() {
        let v = vault();
        let (a, b) = (SecretHash([1; 32]), SecretHash([2; 32]));
        let json = r#"{"code_verifier":"abc"}"#;
        let stored = seal(&v, &a, "oauth:x", json).expect("seal");
        assert!(stored.starts_with("sealed:"), "{stored}");
        assert!(!stored.contains("code_verifier"), "{stored}");
        assert_eq!(open(&v, &a, "oauth:x", &stored).expect("open"), json);
        assert!(matches!(
            open(&v, &b, "oauth:x", &stored),
            Err(VaultError::Corrupt)
        ));
        assert!(matches!(
            open(&v, &a, "oauth:y", &stored),
            Err(VaultError::Corrupt)
        ));
        assert!(matches!(
            open(&v, &a, "oauth:x", "sealed:!!"),
            Err(VaultError::Corrupt)
        ));
        assert_eq!(key_id(&stored), Some(v.current_key_id()));
    }

    #[test]
    fn data_stored_before_sealing_reads_as_it_is() {
        let v = vault();
        let legacy = r#"{"return_to":"/x"}"#;
        let key = SecretHash([1; 32]);
        assert_eq!(open(&v, &key, "oauth:x", legacy).expect("open"), legacy);
        assert_eq!(key_id(legacy), None);
        let other = vault();
        let stored = seal(&other, &key, "oauth:x", legacy).expect("seal");
        assert!(matches!(
            open(&v, &key, "oauth:x", &stored),
            Err(VaultError::UnknownKey(id)) if id == other.current_key_id()
        ));
    }
}
