//! Secret values oauthd hands out (state values, API keys) and their stored form.
//!
//! A secret is 32 bytes written as unpadded base64url: from the OS CSPRNG, except that a
//! state value starts with its creation time (see `StateValue`). Only a hash ever reaches
//! storage. `Debug` and `Display` never print a secret: a stray `{:?}` in a log line shows
//! a state by its public identifier, and a key not at all.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;

/// Length of a base64url-encoded 32-byte secret without padding.
pub const SECRET_CHARS: usize = 43;

/// Prefix of API keys, so secret scanners and people can tell what a leaked string is.
pub const API_KEY_PREFIX: &str = "oauthd_";

/// SHA-256 of a secret: the only form in which states and API keys are stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    pub fn of(text: &str) -> Self {
        SecretHash(Sha256::digest(text.as_bytes()).into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(SecretHash)
    }

    /// Lower-case hex: not secret (a digest of 256 random bits), fit for ids and keys.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        self.push_hex(&mut out);
        out
    }

    /// Appends the lower-case hex (on hot paths: no allocation of its own).
    pub fn push_hex(&self, out: &mut String) {
        let digit = |n: u8| if n < 10 { b'0' + n } else { b'a' + n - 10 };
        let mut text = [0u8; 64];
        for (pair, b) in text.chunks_exact_mut(2).zip(self.0) {
            if let [high, low] = pair {
                *high = digit(b >> 4);
                *low = digit(b & 15);
            }
        }
        // Always ASCII.
        out.push_str(std::str::from_utf8(&text).unwrap_or_default());
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(SecretHash(out))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// A secret setting (admin token, metrics token): zeroized on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct SecretText(zeroize::Zeroizing<String>);

impl SecretText {
    pub fn new(text: String) -> Self {
        SecretText(zeroize::Zeroizing::new(text))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretText([redacted])")
    }
}

/// Fills a buffer from the OS CSPRNG. Failure means the OS has no entropy source, which
/// oauthd cannot work around; callers turn it into a 503.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf)?;
    Ok(buf)
}

/// Bytes from the OS CSPRNG a thread fetches at once for state values: one system call
/// per 39 values instead of one each (under the pairs load it was 1.5 % of a worker's
/// CPU).
const STATE_RANDOM_BATCH: usize = 1024;

/// A thread's fetched and not yet used CSPRNG bytes for state values: `bytes[used..]`.
/// Each byte handed out is overwritten in the buffer at once, and the rest is wiped when
/// the thread ends. Only state values draw from it: keys, nonces and other secrets come
/// from the OS each time, so nothing long-lived waits here before it exists. A copy of
/// the process (a fork, a restored snapshot) would draw the same bytes again, but a state
/// value also carries its creation time to the millisecond.
struct StatePool {
    bytes: zeroize::Zeroizing<[u8; STATE_RANDOM_BATCH]>,
    used: usize,
}

thread_local! {
    static STATE_POOL: std::cell::RefCell<StatePool> = std::cell::RefCell::new(StatePool {
        bytes: zeroize::Zeroizing::new([0; STATE_RANDOM_BATCH]),
        used: STATE_RANDOM_BATCH,
    });
}

/// The random part of a new state value, from the thread's pool.
fn state_random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    STATE_POOL.with_borrow_mut(|pool| {
        if STATE_RANDOM_BATCH - pool.used < N {
            getrandom::fill(&mut pool.bytes[..])?;
            pool.used = 0;
        }
        let from = pool.used;
        let mut buf = [0u8; N];
        match pool.bytes.get_mut(from..from + N) {
            Some(taken) => {
                buf.copy_from_slice(taken);
                zeroize::Zeroize::zeroize(taken);
                pool.used += N;
            }
            // Larger than the pool: straight from the OS.
            None => getrandom::fill(&mut buf)?,
        }
        Ok(buf)
    })
}

fn random_token() -> Result<String, getrandom::Error> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// True when `s` has the shape of a value oauthd issues: 43 base64url characters.
pub fn is_token_shaped(s: &str) -> bool {
    s.len() == SECRET_CHARS
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A state value as issued to an app. Redacted in `Debug`/`Display`.
///
/// Its first 6 bytes are the creation time (milliseconds since the epoch, big-endian),
/// the other 26 come from the OS CSPRNG (208 bits). The stored key (`hash`) starts with the
/// same 6 bytes, so rows sit in the primary key in the order they were made: new states
/// and the consumes that soon follow touch the same few pages at its end however many
/// older or expired states the table holds, and a sweep deletes neighbouring rows.
///
/// Its stored key is worked out once, when the value is made or parsed: a request asks
/// for it more than once (to drop it from the verify cache, then to find the row).
#[derive(Clone, PartialEq, Eq)]
pub struct StateValue {
    /// Zeroed when dropped, as every copy oauthd keeps of a secret is.
    value: zeroize::Zeroizing<String>,
    key: SecretHash,
}

/// Bytes of creation time at the start of a state value and of its stored key.
const TIME_PREFIX: usize = 6;

/// A state value's stored key (see `StateValue::hash`).
fn stored_key(value: &str) -> SecretHash {
    let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
    let mut key = [0u8; 32];
    // The first 8 characters are exactly the first 6 bytes; `parse` checked the alphabet,
    // so they decode.
    if let Ok(prefix) = URL_SAFE_NO_PAD.decode(value.get(..8).unwrap_or_default()) {
        if let Some(prefix) = prefix.get(..TIME_PREFIX) {
            key[..TIME_PREFIX].copy_from_slice(prefix);
        }
    }
    key[TIME_PREFIX..].copy_from_slice(&digest[..32 - TIME_PREFIX]);
    SecretHash(key)
}

impl StateValue {
    pub fn generate() -> Result<Self, getrandom::Error> {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut bytes = [0u8; 32];
        bytes[..TIME_PREFIX].copy_from_slice(&millis.to_be_bytes()[8 - TIME_PREFIX..]);
        bytes[TIME_PREFIX..].copy_from_slice(&state_random_bytes::<{ 32 - TIME_PREFIX }>()?);
        Ok(StateValue::of(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Accepts only the exact shape oauthd issues; anything else cannot be a state.
    pub fn parse(s: &str) -> Option<Self> {
        is_token_shaped(s).then(|| StateValue::of(s.to_owned()))
    }

    fn of(value: String) -> Self {
        let key = stored_key(&value);
        StateValue {
            value: zeroize::Zeroizing::new(value),
            key,
        }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The stored key: the value's first 6 bytes (its creation time) followed by 26 bytes
    /// of the value's SHA-256. Neither leads back to the value's random part.
    pub fn hash(&self) -> SecretHash {
        self.key
    }

    /// The key states issued before time-ordered keys were stored under: the value's
    /// whole SHA-256. Looked up when `hash` finds nothing, so that states (and sessions,
    /// which may live for weeks) made by an earlier version keep working.
    pub fn legacy_hash(&self) -> SecretHash {
        SecretHash::of(&self.value)
    }

    /// The state's public identifier (`StateId`), as the API's listings show it: what log
    /// lines name a state by. Its value's first characters are its creation time, the
    /// same for every state made in that millisecond.
    pub fn id(&self) -> StateId {
        StateId::of(&self.key)
    }

    /// The keyed hash of a code guarding this state (a 2FA or email code): HMAC-SHA256
    /// keyed with the state value. The state value is never stored, so a copy of the
    /// database cannot be used to try the few million 6-digit codes offline, and a hash
    /// is useless for any other state.
    pub fn code_hash(&self, code: &str) -> SecretHash {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.value.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(b"oauthd state code v1\0");
        mac.update(code.as_bytes());
        SecretHash(mac.finalize().into_bytes().into())
    }
}

/// `value` as JSON in `Bytes` that are zeroed when the last copy of them is dropped: for an
/// answer that carries a token, which the HTTP stack takes as `Bytes` and would otherwise
/// free as they are. The buffer is sized first, so that no partial copy is left behind by
/// growing it. (What the HTTP libraries copy into their own connection buffers is theirs,
/// and is overwritten by the connection's next message.)
pub fn wiped_json<T: serde::Serialize>(value: &T) -> Result<bytes::Bytes, serde_json::Error> {
    let mut size = ByteCount(0);
    serde_json::to_writer(&mut size, value)?;
    let mut buffer = Vec::with_capacity(size.0);
    let written = serde_json::to_writer(&mut buffer, value);
    let owner = Wiped(buffer);
    written?;
    Ok(bytes::Bytes::from_owner(owner))
}

/// `parts` one after the other in `Bytes` that are zeroed when the last copy is dropped
/// (see `wiped_json`): for a header that carries a token.
pub fn wiped_concat(parts: &[&str]) -> bytes::Bytes {
    let mut buffer = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        buffer.extend_from_slice(part.as_bytes());
    }
    bytes::Bytes::from_owner(Wiped(buffer))
}

/// Counts what a serializer writes.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Owns the buffer behind `wiped_json`'s and `wiped_concat`'s `Bytes`; zeroes it when dropped.
struct Wiped<T: zeroize::Zeroize + AsRef<[u8]>>(T);

impl<T: zeroize::Zeroize + AsRef<[u8]>> AsRef<[u8]> for Wiped<T> {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref()
    }
}

impl<T: zeroize::Zeroize + AsRef<[u8]>> Drop for Wiped<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A state's public identifier: a UUID (version 8, RFC 9562) made of the first 16 bytes
/// of the state's SHA-256. It names a state for listing and revoking and can do nothing
/// else: neither it nor the hash lead back to the state value. Derived, so it needs no
/// column or index of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateId(uuid::Uuid);

impl StateId {
    pub fn of(hash: &SecretHash) -> Self {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash.0[..16]);
        StateId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    pub fn parse(text: &str) -> Option<Self> {
        // Only the hyphenated form oauthd writes (the parser also takes braces, `urn:`
        // and bare hex).
        if text.len() != 36 {
            return None;
        }
        let id = uuid::Uuid::try_parse(text).ok()?;
        (id.get_version_num() == 8 && id.get_variant() == uuid::Variant::RFC4122)
            .then_some(StateId(id))
    }

    /// The lowest and highest hash that can carry this identifier. The first six bytes of
    /// the hash are in the identifier unchanged; a lookup scans this (almost always
    /// one-row) range of the primary key and compares the identifier of what it finds.
    pub fn hash_range(&self) -> ([u8; 32], [u8; 32]) {
        let (mut low, mut high) = ([0u8; 32], [0xffu8; 32]);
        low[..6].copy_from_slice(&self.0.as_bytes()[..6]);
        high[..6].copy_from_slice(&self.0.as_bytes()[..6]);
        (low, high)
    }
}

impl fmt::Display for StateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for StateValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateValue(id {})", self.id())
    }
}

impl fmt::Display for StateValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "id {}", self.id())
    }
}

/// An API key as shown once to the operator. Redacted in `Debug`/`Display`.
pub struct ApiKey(zeroize::Zeroizing<String>);

impl ApiKey {
    pub fn generate() -> Result<Self, getrandom::Error> {
        let token = zeroize::Zeroizing::new(random_token()?);
        let mut key =
            zeroize::Zeroizing::new(String::with_capacity(API_KEY_PREFIX.len() + token.len()));
        key.push_str(API_KEY_PREFIX);
        key.push_str(&token);
        Ok(ApiKey(key))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_written_as_lower_case_hex_and_read_back() {
        let hash = SecretHash::of("x");
        let slow: String = hash.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hash.to_hex(), slow);
        assert_eq!(SecretHash::from_hex(&hash.to_hex()), Some(hash));
    }

    /// A buffer that tells when it was zeroed.
    struct Probe(Vec<u8>, std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl zeroize::Zeroize for Probe {
        fn zeroize(&mut self) {
            self.0.zeroize();
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl AsRef<[u8]> for Probe {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    #[test]
    fn wiped_buffers_are_zeroed_once_their_last_copy_is_dropped() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let zeroed = std::sync::Arc::new(AtomicBool::new(false));
        let bytes = bytes::Bytes::from_owner(Wiped(Probe(b"secret".to_vec(), zeroed.clone())));
        let tail = bytes.slice(1..);
        drop(bytes);
        assert!(
            !zeroed.load(Ordering::SeqCst),
            "zeroed while a copy was held"
        );
        assert_eq!(&tail[..], b"ecret");
        drop(tail);
        assert!(zeroed.load(Ordering::SeqCst));
    }

    #[test]
    fn wiped_json_and_concat_hold_what_they_were_given() {
        let value = serde_json::json!({"access_token": "a\"b\\c\u{1}é", "expires_in": 5});
        let json = wiped_json(&value).unwrap();
        assert_eq!(json, serde_json::to_vec(&value).unwrap());
        // Held by its wiping owner: never handed over as a plain buffer that would be
        // freed as it is (a `Bytes` made from a `Vec` can be).
        assert!(json.try_into_mut().is_err());
        assert!(bytes::Bytes::from(b"x".to_vec()).try_into_mut().is_ok());
        assert!(wiped_concat(&["a"]).try_into_mut().is_err());
        assert_eq!(wiped_concat(&["Bearer ", "t0k"]), "Bearer t0k");
        assert_eq!(wiped_concat(&[]), "");
    }

    #[test]
    fn generated_state_has_the_documented_shape() {
        let s = StateValue::generate().unwrap();
        assert_eq!(s.expose().len(), 43);
        assert!(is_token_shaped(s.expose()));
        assert_ne!(s, StateValue::generate().unwrap());
    }

    #[test]
    fn pooled_random_bytes_are_each_handed_out_once_and_wiped_from_the_pool() {
        // Enough draws to refill the thread's pool several times.
        let draws: Vec<[u8; 26]> = (0..STATE_RANDOM_BATCH / 26 * 4)
            .map(|_| state_random_bytes::<26>().unwrap())
            .collect();
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert_eq!(distinct.len(), draws.len(), "a value came out twice");
        assert!(draws.iter().all(|d| d.iter().any(|b| *b != 0)));
        STATE_POOL.with_borrow(|pool| {
            assert!(pool.used > 0);
            assert!(
                pool.bytes[..pool.used].iter().all(|b| *b == 0),
                "bytes handed out are still in the pool"
            );
            assert!(pool.bytes[pool.used..].iter().any(|b| *b != 0));
        });
    }

    #[test]
    fn debug_and_display_never_print_the_whole_state() {
        let s = StateValue::generate().unwrap();
        assert!(!format!("{s:?}").contains(s.expose()));
        assert!(!format!("{s}").contains(s.expose()));
        // By its id, as listings show it: not by the value's first characters, its time.
        assert!(!format!("{s}").contains(&s.expose()[..8]));
        assert_eq!(format!("{s}"), format!("id {}", StateId::of(&s.hash())));
    }

    #[test]
    fn api_key_debug_is_redacted() {
        let k = ApiKey::generate().unwrap();
        assert!(k.expose().starts_with(API_KEY_PREFIX));
        assert!(!format!("{k:?}").contains(k.expose()));
    }

    #[test]
    fn a_state_id_names_its_hash_and_only_it() {
        let s = StateValue::generate().unwrap();
        let id = StateId::of(&s.hash());
        let text = id.to_string();
        assert_eq!(StateId::parse(&text), Some(id));
        let (low, high) = id.hash_range();
        assert!(low <= s.hash().0 && s.hash().0 <= high);
        let other = StateValue::generate().unwrap();
        assert_ne!(StateId::of(&other.hash()), id);
        assert!(StateId::parse(&uuid::Uuid::new_v4().to_string()).is_none());
        assert!(StateId::parse("not-a-uuid").is_none());
    }

    #[test]
    fn state_keys_sort_by_creation_and_keep_208_bits_of_hash() {
        let first = StateValue::generate().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = StateValue::generate().unwrap();
        assert!(
            first.hash().0 < second.hash().0,
            "keys sort by creation time"
        );
        let parsed = StateValue::parse(first.expose()).unwrap();
        assert_eq!(parsed.hash(), first.hash());
        assert_eq!(parsed, first);
        assert_ne!(first.hash(), first.legacy_hash());
        let digest = Sha256::digest(first.expose().as_bytes());
        assert_eq!(first.hash().0[6..], digest[..26]);
        assert_eq!(first.legacy_hash().0[..], digest[..]);
        // The random part differs between values made in the same millisecond.
        let many: std::collections::HashSet<_> = (0..1000)
            .map(|_| StateValue::generate().unwrap().hash().0)
            .collect();
        assert_eq!(many.len(), 1000);
        // A value of the old, all-random shape still parses and has both keys.
        let old = StateValue::parse(&random_token().unwrap()).unwrap();
        assert_eq!(old.legacy_hash(), SecretHash::of(old.expose()));
    }

    #[test]
    fn a_code_hash_is_bound_to_its_state() {
        let (a, b) = (
            StateValue::generate().unwrap(),
            StateValue::generate().unwrap(),
        );
        assert_eq!(a.code_hash("123456"), a.code_hash("123456"));
        assert_ne!(a.code_hash("123456"), a.code_hash("123457"));
        assert_ne!(a.code_hash("123456"), b.code_hash("123456"));
    }

    #[test]
    fn parse_rejects_wrong_shapes() {
        assert!(StateValue::parse("short").is_none());
        assert!(StateValue::parse(&"a".repeat(44)).is_none());
        assert!(StateValue::parse(&format!("{}=", "a".repeat(42))).is_none());
        assert!(StateValue::parse(&"é".repeat(21)).is_none());
        assert!(StateValue::parse(&"a".repeat(43)).is_some());
    }
}
