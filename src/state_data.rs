//! A state's `data` at rest: sealed by the vault (AES-256-GCM), so a copy of the database
//! file or of Redis holds no app's data in clear (apps keep PKCE verifiers, 2FA challenges
//! and session details there).
//!
//! Stored as text, `sealed:` then the sealed value in base64, where both backends kept the
//! JSON. The associated data names the state's stored key, namespace and subject (none of
//! which ever changes): sealed data copied into another state's row, or a row moved to
//! another subject, fails to open, so someone who can write the database cannot make a
//! state they know, or a subject's listing, answer another state's data. Data stored before
//! it was sealed is JSON, which never starts with `s`: it is read as it is only where the
//! caller says so (the state service, while live states hold such data), and refused as
//! altered otherwise, or anyone who can write the database could write data in clear.

use crate::secret::SecretHash;
use crate::vault::{sealed_key_id, Sealer, VaultError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

const PREFIX: &str = "sealed:";

/// Whose data it is. Neither a namespace nor a subject holds a NUL, so the parts never run
/// into each other.
pub struct Owner<'a> {
    pub key_hash: &'a SecretHash,
    pub namespace: &'a str,
    pub subject: Option<&'a str>,
}

fn aad(owner: &Owner<'_>) -> String {
    const NAME: &str = "state-data:";
    let subject = owner.subject.unwrap_or_default();
    let mut out =
        String::with_capacity(NAME.len() + 64 + 2 + owner.namespace.len() + subject.len());
    out.push_str(NAME);
    owner.key_hash.push_hex(&mut out);
    out.push('\0');
    out.push_str(owner.namespace);
    if let Some(subject) = owner.subject {
        out.push('\0');
        out.push_str(subject);
    }
    out
}

/// The text to store for a state's JSON `data`.
pub fn seal(vault: &impl Sealer, owner: &Owner<'_>, json: &str) -> Result<String, VaultError> {
    let sealed = vault.seal(&aad(owner), json.as_bytes())?;
    let mut out = String::with_capacity(PREFIX.len() + sealed.len().div_ceil(3) * 4);
    out.push_str(PREFIX);
    STANDARD.encode_string(&sealed, &mut out);
    Ok(out)
}

/// Whether stored data is sealed (else it was stored in clear, before sealing).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The JSON a state's stored data holds. Data stored in clear comes back as it is where
/// `in_clear` allows it, and is refused as altered (`Corrupt`) otherwise.
pub fn open(
    vault: &impl Sealer,
    owner: &Owner<'_>,
    stored: &str,
    in_clear: bool,
) -> Result<String, VaultError> {
    let Some(encoded) = stored.strip_prefix(PREFIX) else {
        return if in_clear {
            Ok(stored.to_owned())
        } else {
            Err(VaultError::Corrupt)
        };
    };
    let sealed = STANDARD.decode(encoded).map_err(|_| VaultError::Corrupt)?;
    let plain = vault.open(&aad(owner), &sealed)?;
    std::str::from_utf8(&plain)
        .map(str::to_owned)
        .map_err(|_| VaultError::Corrupt)
}

/// Characters of stored data that name the key it was sealed with (`key_id` needs no more).
pub const KEY_ID_CHARS: usize = PREFIX.len() + 8;

/// The id of the vault key stored data (or its first `KEY_ID_CHARS` characters) was sealed
/// with; `None` for data stored before sealing.
pub fn key_id(stored: &str) -> Option<String> {
    let encoded = stored.strip_prefix(PREFIX)?;
    // The version byte and the key id are the first 5 bytes: 8 characters hold 6.
    let head = Zeroizing::new(STANDARD.decode(encoded.get(..8)?).ok()?);
    sealed_key_id(&head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Vault;

    fn vault() -> Vault {
        Vault::from_text(&crate::vault::generate_key_text().expect("key")).expect("vault")
    }

    fn owner<'a>(
        key_hash: &'a SecretHash,
        namespace: &'a str,
        subject: Option<&'a str>,
    ) -> Owner<'a> {
        Owner {
            key_hash,
            namespace,
            subject,
        }
    }

    #[test]
    fn data_opens_only_for_the_state_it_was_sealed_for() {
        let v = vault();
        let (a, b) = (SecretHash([1; 32]), SecretHash([2; 32]));
        let json = r#"{"code_verifier":"abc"}"#;
        let stored = seal(&v, &owner(&a, "oauth:x", Some("alice")), json).expect("seal");
        assert!(stored.starts_with("sealed:"), "{stored}");
        assert!(!stored.contains("code_verifier"), "{stored}");
        let opened = open(&v, &owner(&a, "oauth:x", Some("alice")), &stored, false).expect("open");
        assert_eq!(opened, json);
        for other in [
            owner(&b, "oauth:x", Some("alice")),
            owner(&a, "oauth:y", Some("alice")),
            owner(&a, "oauth:x", Some("mallory")),
            owner(&a, "oauth:x", None),
        ] {
            assert!(matches!(
                open(&v, &other, &stored, false),
                Err(VaultError::Corrupt)
            ));
        }
        assert!(matches!(
            open(&v, &owner(&a, "oauth:x", Some("alice")), "sealed:!!", false),
            Err(VaultError::Corrupt)
        ));
        assert_eq!(key_id(&stored), Some(v.current_key_id()));
        assert_eq!(key_id(&stored[..KEY_ID_CHARS]), Some(v.current_key_id()));
    }

    #[test]
    fn data_stored_before_sealing_reads_as_it_is_only_where_allowed() {
        let v = vault();
        let legacy = r#"{"return_to":"/x"}"#;
        let key = SecretHash([1; 32]);
        let o = owner(&key, "oauth:x", None);
        assert_eq!(open(&v, &o, legacy, true).expect("open"), legacy);
        assert!(matches!(
            open(&v, &o, legacy, false),
            Err(VaultError::Corrupt)
        ));
        assert!(!is_sealed(legacy));
        assert_eq!(key_id(legacy), None);
        let other = vault();
        let stored = seal(&other, &o, legacy).expect("seal");
        assert!(is_sealed(&stored));
        assert!(matches!(
            open(&v, &o, &stored, true),
            Err(VaultError::UnknownKey(id)) if id == other.current_key_id()
        ));
    }
}
