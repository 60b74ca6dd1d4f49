//! OpenID Connect ID tokens (Core 1.0 §3.1.3.7): when a token response carries one, its
//! signature is checked against the issuer's published keys (`jwks_uri`), and so are
//! `iss`, `aud` (and `azp`), `exp` and the `nonce` oauthd sent. Only asymmetric algorithms
//! are accepted; the keys are fetched on first use, again after `KEYS_TTL` and when a
//! token names a key id the cached set does not hold (at most once every `REFETCH_AFTER`,
//! 5 seconds). While the provider's key set cannot be fetched again, the set it last
//! published goes on verifying for `KEYS_STALE_LIMIT` more: an ID token comes straight
//! from the token endpoint, over TLS, so a short outage of `jwks_uri` should not fail
//! every sign-in.

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::time::Duration;
use url::Url;

/// Clock difference tolerated on `exp`/`iat`/`nbf`.
const LEEWAY_SECS: u64 = 60;
/// How soon the key set may be fetched again for a key id it does not hold.
const REFETCH_AFTER: Duration = Duration::from_secs(5);
/// How long a fetched key set is trusted before it is fetched again: a key the provider
/// withdrew stops verifying within this time while its `jwks_uri` answers.
const KEYS_TTL: Duration = Duration::from_secs(3600);
/// How much longer than `KEYS_TTL` the last set fetched still verifies while fetching it
/// again fails.
const KEYS_STALE_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// Largest key set accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum IdTokenError {
    #[error("the ID token did not verify: {0}")]
    Invalid(String),
    #[error("the provider's signing keys could not be read: {0}")]
    Keys(String),
}

/// What the broker keeps of a verified ID token: which account this is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifiedIdentity {
    pub sub: String,
    pub email: Option<String>,
    pub name: Option<String>,
}

/// What the ID token must match.
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// The nonce sent with the authorization request; `None` where none was sent (the
    /// device flow), and then none is checked.
    pub nonce: Option<&'a str>,
    /// What time it is (unix ms), for `exp` and `nbf`.
    pub now_ms: i64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    aud: serde_json::Value,
    azp: Option<String>,
    nonce: Option<String>,
    #[serde(default, deserialize_with = "text_or_none")]
    email: Option<String>,
    #[serde(default, deserialize_with = "true_or_false")]
    email_verified: bool,
    #[serde(default, deserialize_with = "text_or_none")]
    name: Option<String>,
    exp: f64,
    nbf: Option<f64>,
    /// When the provider issued it, by its clock: only to say which clock is off.
    #[serde(default)]
    iat: Option<f64>,
}

/// `email_verified` as providers send it: `true`, or the string `"true"` (some send every
/// claim as a string); anything else is not verified. An ID token is not refused for how
/// it spells a claim oauthd only shows.
fn true_or_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match serde::Deserialize::deserialize(d)? {
        serde_json::Value::Bool(b) => b,
        serde_json::Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    })
}

/// A claim oauthd only shows (`email`, `name`): its text, or nothing when it is not text.
fn text_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde::Deserialize::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// The issuer's keys, cached, and the last failure to fetch them: callbacks queued behind a
/// fetch that failed get its error rather than each waiting out a fetch of its own (a
/// stalled `jwks_uri` would otherwise hold the last of them for as many `provider_timeout`s
/// as there are callers). The fetch is tried again `REFETCH_AFTER` later. Times are the
/// wall clock oauthd was given (unix ms), as everywhere else.
#[derive(Default)]
pub struct JwksCache {
    keys: tokio::sync::Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    set: Option<(i64, JwkSet)>,
    failed: Option<(i64, IdTokenError)>,
}

/// How long ago `at` was at `now_ms`; forever if the clock went back since (a set or a
/// failure is then taken as old, never stretched by the step).
fn age(at: i64, now_ms: i64) -> Duration {
    u64::try_from(now_ms.saturating_sub(at)).map_or(Duration::MAX, Duration::from_millis)
}

/// How long before a held key set is due (`KEYS_TTL`) `JwksCache::warm` fetches it again.
const WARM_AHEAD: Duration = Duration::from_secs(300);

impl JwksCache {
    /// Fetches the key set ahead of need: when none is held, or the one held is due
    /// within `WARM_AHEAD`, and no fetch failed in the last `REFETCH_AFTER`. A failure, or
    /// a fetch that takes longer than `wait`, is kept for the verification that needs the
    /// keys, as its own failure would be: it uses the set held, if any, and does not wait
    /// for another fetch within `REFETCH_AFTER` (a `jwks_uri` that stalls made a refresh
    /// wait 2 s here, then its whole timeout again after the answer, which then waited to
    /// be saved). Whether a key set is at hand now, fetched or held and not due: when not,
    /// the caller should not ask for the keys again until it has saved what it waits for.
    pub async fn warm(
        &self,
        http: &reqwest::Client,
        url: &Url,
        now_ms: i64,
        wait: Duration,
    ) -> bool {
        let mut cached = self.keys.lock().await;
        let due = cached
            .set
            .as_ref()
            .is_none_or(|(at, _)| age(*at, now_ms).saturating_add(WARM_AHEAD) >= KEYS_TTL);
        let failed_lately = cached
            .failed
            .as_ref()
            .is_some_and(|(at, _)| age(*at, now_ms) < REFETCH_AFTER);
        if !due {
            return true;
        }
        if failed_lately {
            return false;
        }
        match tokio::time::timeout(wait, fetch(http, url)).await {
            Ok(Ok(set)) => {
                cached.set = Some((now_ms, set));
                cached.failed = None;
                true
            }
            Ok(Err(why)) => {
                cached.failed = Some((now_ms, why));
                false
            }
            Err(_) => {
                let why = format!("{url} did not answer within {} s", wait.as_secs());
                cached.failed = Some((now_ms, IdTokenError::Keys(why)));
                false
            }
        }
    }

    async fn key(
        &self,
        http: &reqwest::Client,
        url: &Url,
        kid: Option<&str>,
        alg: Algorithm,
        now_ms: i64,
    ) -> Result<DecodingKey, IdTokenError> {
        let mut cached = self.keys.lock().await;
        let stale = cached.set.as_ref().is_none_or(|(at, set)| {
            let age = age(*at, now_ms);
            age >= KEYS_TTL || (pick(set, kid, alg).is_none() && age >= REFETCH_AFTER)
        });
        // Why the set could not be fetched again, when it could not.
        let mut unfetched = None;
        if stale {
            match &cached.failed {
                Some((at, why)) if age(*at, now_ms) < REFETCH_AFTER => {
                    unfetched = Some(why.clone());
                }
                _ => match fetch(http, url).await {
                    Ok(set) => {
                        cached.set = Some((now_ms, set));
                        cached.failed = None;
                    }
                    Err(why) => {
                        if let Some((at, _)) = &cached.set {
                            let mins = age(*at, now_ms).as_secs() / 60;
                            log::warn!(
                                "{why}; ID tokens are checked against the keys fetched {mins} minutes ago, for at most {} hours after they were fetched",
                                (KEYS_TTL + KEYS_STALE_LIMIT).as_secs() / 3600
                            );
                        }
                        cached.failed = Some((now_ms, why.clone()));
                        unfetched = Some(why);
                    }
                },
            }
        }
        let set = cached
            .set
            .as_ref()
            .filter(|(at, _)| unfetched.is_none() || age(*at, now_ms) < KEYS_TTL + KEYS_STALE_LIMIT)
            .map(|(_, set)| set);
        let jwk = match (set.and_then(|s| pick(s, kid, alg)), unfetched) {
            (Some(jwk), _) => jwk,
            (None, Some(why)) => return Err(why),
            (None, None) => {
                return Err(IdTokenError::Invalid(match kid {
                    Some(k) => format!(
                        "no signing key with id {:?} at {url}",
                        super::provider_text(k, 64)
                    ),
                    None => {
                        format!(
                            "the token names no key id and {url} holds no single key for {alg:?}"
                        )
                    }
                }))
            }
        };
        DecodingKey::from_jwk(jwk).map_err(|e| IdTokenError::Keys(e.to_string()))
    }
}

/// The key a token asks for: by id, or the one signing key that fits the algorithm.
fn pick<'a>(set: &'a JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<&'a Jwk> {
    let fits = |k: &&Jwk| {
        !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption))
            && k.common
                .key_algorithm
                .is_none_or(|a| format!("{a:?}") == format!("{alg:?}"))
    };
    match kid {
        Some(kid) => set
            .keys
            .iter()
            .filter(fits)
            .find(|k| k.common.key_id.as_deref() == Some(kid)),
        None => {
            let mut candidates = set.keys.iter().filter(fits);
            match (candidates.next(), candidates.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
    }
}

async fn fetch(http: &reqwest::Client, url: &Url) -> Result<JwkSet, IdTokenError> {
    let keys = |m: String| IdTokenError::Keys(format!("{url}: {m}"));
    let resp = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| keys(super::with_causes(&e)))?;
    if !resp.status().is_success() {
        return Err(keys(format!("HTTP {}", resp.status().as_u16())));
    }
    let body = super::read_limited(resp, MAX_JWKS_BYTES)
        .await
        .map_err(keys)?;
    // Keys of types this build cannot use are skipped, not fatal.
    let raw: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| keys(format!("not a key set: {e}")))?;
    let list = raw
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| keys("not a key set: no \"keys\" array".into()))?;
    Ok(JwkSet {
        keys: list
            .iter()
            .filter_map(|k| serde_json::from_value(k.clone()).ok())
            .collect(),
    })
}

/// Verifies `token` and returns the account it names.
pub async fn verify(
    http: &reqwest::Client,
    cache: &JwksCache,
    jwks_uri: Option<&Url>,
    token: &str,
    expected: &Expected<'_>,
) -> Result<VerifiedIdentity, IdTokenError> {
    let invalid = |m: String| IdTokenError::Invalid(m);
    let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
    let asymmetric = !matches!(
        header.alg,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    );
    if !asymmetric {
        return Err(invalid(format!(
            "{:?} (a shared-secret signature) is not accepted",
            header.alg
        )));
    }
    let url = jwks_uri
        .ok_or_else(|| IdTokenError::Keys("the provider's metadata names no jwks_uri".into()))?;
    let key = cache
        .key(
            http,
            url,
            header.kid.as_deref(),
            header.alg,
            expected.now_ms,
        )
        .await?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[expected.issuer]);
    validation.set_audience(&[expected.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    // Time is checked below against the clock oauthd was given, not the library's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|e| invalid(e.to_string()))?
        .claims;
    check_time(claims.exp, claims.nbf, expected.now_ms)
        .map_err(|e| with_clock_hint(e, claims.iat, expected.now_ms))?;
    check_azp(&claims, expected.client_id)?;
    if let Some(nonce) = expected.nonce {
        match claims.nonce.as_deref() {
            Some(n) if crate::admin::secret_matches(nonce, n) => {}
            Some(_) => return Err(invalid("the nonce is not the one oauthd sent".into())),
            None => return Err(invalid("the token carries no nonce".into())),
        }
    }
    Ok(VerifiedIdentity {
        sub: super::provider_text(&claims.sub, 255),
        // An address the provider did not verify could be anyone's: not shown as the account.
        email: claims
            .email
            .filter(|_| claims.email_verified)
            .map(|e| super::provider_text(&e, 255)),
        name: claims.name.map(|n| super::provider_text(&n, 255)),
    })
}

/// Core §3.1.3.7 item 9 (`exp`), and `nbf` when present, with `LEEWAY_SECS` either way.
fn check_time(exp: f64, nbf: Option<f64>, now_ms: i64) -> Result<(), IdTokenError> {
    let now = now_ms as f64 / 1000.0;
    let leeway = LEEWAY_SECS as f64;
    if !exp.is_finite() || exp + leeway < now {
        return Err(IdTokenError::Invalid("the token has expired".into()));
    }
    if nbf.is_some_and(|nbf| !nbf.is_finite() || nbf - leeway > now) {
        return Err(IdTokenError::Invalid("the token is not valid yet".into()));
    }
    Ok(())
}

/// A time check that failed, with what the provider's `iat` says of this machine's clock:
/// a token just issued that looks expired (or not valid yet) says the clock here is ahead
/// (or behind) of the provider's by about the difference.
fn with_clock_hint(e: IdTokenError, iat: Option<f64>, now_ms: i64) -> IdTokenError {
    let (IdTokenError::Invalid(text), Some(iat)) = (&e, iat.filter(|i| i.is_finite())) else {
        return e;
    };
    let off = now_ms / 1000 - iat as i64;
    if off.abs() <= LEEWAY_SECS as i64 {
        return e;
    }
    let (way, secs) = if off > 0 {
        ("ahead of", off)
    } else {
        ("behind", -off)
    };
    IdTokenError::Invalid(format!(
        "{text}: the provider issued it at {} and this machine's clock reads {}, so this clock is likely {secs} s {way} the provider's: set it right (NTP)",
        crate::clock::rfc3339((iat * 1000.0) as i64),
        crate::clock::rfc3339(now_ms)
    ))
}

/// Core §3.1.3.7 items 4–5: with several audiences, `azp` must be present and be us.
fn check_azp(claims: &Claims, client_id: &str) -> Result<(), IdTokenError> {
    let several = claims.aud.as_array().is_some_and(|a| a.len() > 1);
    match claims.azp.as_deref() {
        Some(azp) if azp != client_id => {
            Err(IdTokenError::Invalid("azp names another client".into()))
        }
        None if several => Err(IdTokenError::Invalid("several audiences and no azp".into())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_not_before_are_judged_by_the_given_time_with_a_minute_of_leeway() {
        let at = |secs: i64| secs * 1000;
        assert!(check_time(1_000.0, None, at(1_000)).is_ok());
        assert!(check_time(1_000.0, None, at(1_060)).is_ok());
        assert!(check_time(1_000.0, None, at(1_061)).is_err());
        assert!(check_time(2_000.0, Some(1_100.0), at(1_040)).is_ok());
        assert!(check_time(2_000.0, Some(1_100.0), at(1_039)).is_err());
        assert!(check_time(f64::NAN, None, at(0)).is_err());
    }

    #[test]
    fn a_token_that_looks_expired_on_issue_says_which_clock_is_off() {
        let hour = 3_600_000;
        let expired = check_time(1_000.0, None, 1_000_000 + 2 * hour).unwrap_err();
        let said = with_clock_hint(expired, Some(700.0), 1_000_000 + 2 * hour).to_string();
        assert!(said.contains("the token has expired"), "{said}");
        assert!(
            said.contains("this clock is likely 7500 s ahead of the provider's"),
            "{said}"
        );
        let early = check_time(9_000.0, Some(8_000.0), 1_000_000).unwrap_err();
        let said = with_clock_hint(early, Some(8_000.0), 1_000_000).to_string();
        assert!(said.contains("7000 s behind the provider's"), "{said}");
        // Without iat, or within the leeway: as it was.
        let plain = check_time(1_000.0, None, 2_000_000).unwrap_err();
        assert_eq!(
            with_clock_hint(plain, None, 2_000_000).to_string(),
            check_time(1_000.0, None, 2_000_000)
                .unwrap_err()
                .to_string()
        );
    }

    fn claims(aud: serde_json::Value, azp: Option<&str>) -> Claims {
        Claims {
            sub: "s".into(),
            aud,
            azp: azp.map(str::to_owned),
            nonce: None,
            email: None,
            email_verified: false,
            name: None,
            exp: 0.0,
            nbf: None,
            iat: None,
        }
    }

    #[test]
    fn azp_rules() {
        assert!(check_azp(&claims(json("c"), None), "c").is_ok());
        assert!(check_azp(&claims(serde_json::json!(["c", "x"]), None), "c").is_err());
        assert!(check_azp(&claims(serde_json::json!(["c", "x"]), Some("c")), "c").is_ok());
        assert!(check_azp(&claims(json("c"), Some("other")), "c").is_err());
    }

    #[test]
    fn claims_oauthd_only_shows_are_read_however_they_are_spelled() {
        let read = |v: serde_json::Value| serde_json::from_value::<Claims>(v).unwrap();
        let base = serde_json::json!({"sub": "s", "exp": 1});
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            read(v)
        };
        let c = with(
            serde_json::json!({"email": "a@example.org", "email_verified": "true", "name": 42}),
        );
        assert_eq!(
            (c.email.as_deref(), c.email_verified, c.name),
            (Some("a@example.org"), true, None)
        );
        let c = with(serde_json::json!({"email_verified": "false", "email": ["x"], "name": "Al"}));
        assert_eq!(
            (c.email, c.email_verified, c.name.as_deref()),
            (None, false, Some("Al"))
        );
        assert!(with(serde_json::json!({"email_verified": true})).email_verified);
        assert!(!with(serde_json::json!({"email_verified": 1})).email_verified);
        assert!(!read(base).email_verified);
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::Value::String(s.into())
    }

    #[tokio::test]
    async fn a_shared_secret_signature_is_refused_before_any_key_is_fetched() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let token = format!(
            "{}.{}.{}",
            part(serde_json::json!({"alg": "HS256", "typ": "JWT"})),
            part(serde_json::json!({"sub": "a", "iss": "i", "aud": "c", "exp": 9_999_999_999u64})),
            URL_SAFE_NO_PAD.encode(b"sig")
        );
        let expected = Expected {
            issuer: "i",
            client_id: "c",
            nonce: None,
            now_ms: 0,
        };
        let http = reqwest::Client::new();
        let err = verify(&http, &JwksCache::default(), None, &token, &expected)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not accepted"), "{err}");
    }

    /// A test-only Ed25519 key: (PKCS#8 DER, the public key's `x`).
    const ED_PKCS8: &str = "302e020100300506032b657004220420bfcd7dff9566d1d4be2141dc91c096bfa4fb58d0dc8687242464769c4e07a33d";
    const ED_X: &str = "HwGOEN6tG-Yi_mcsiRphXrfDabDHm2gXV8Zbn3tBmfQ";

    #[tokio::test]
    async fn the_last_key_set_verifies_for_a_day_while_it_cannot_be_fetched_again() {
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let der: Vec<u8> = (0..ED_PKCS8.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&ED_PKCS8[i..i + 2], 16).unwrap())
            .collect();
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        let t0: i64 = 1_800_000_000_000;
        let hour = 3_600_000;
        let token = jsonwebtoken::encode(
            &header,
            &serde_json::json!({"iss": "i", "aud": "c", "sub": "alice",
                                "exp": (t0 + 30 * hour) / 1000}),
            &jsonwebtoken::EncodingKey::from_ed_der(&der),
        )
        .unwrap();
        let mock = MockServer::start().await;
        let serve = |status: u16| {
            Mock::given(method("GET")).and(path("/jwks")).respond_with(
                ResponseTemplate::new(status).set_body_json(serde_json::json!({"keys": [
                    {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "use": "sig", "x": ED_X}
                ]})),
            )
        };
        serve(200).mount(&mock).await;
        let url = Url::parse(&format!("{}/jwks", mock.uri())).unwrap();
        let (http, cache) = (reqwest::Client::new(), JwksCache::default());
        let fetches = || async { mock.received_requests().await.unwrap_or_default().len() };
        let at = |now_ms| Expected {
            issuer: "i",
            client_id: "c",
            nonce: None,
            now_ms,
        };
        let check = |now_ms| {
            let (http, cache, url, token) = (&http, &cache, &url, &token);
            async move { verify(http, cache, Some(url), token, &at(now_ms)).await }
        };
        assert_eq!(check(t0).await.unwrap().sub, "alice");
        assert_eq!(fetches().await, 1);
        // The provider's key set stops answering.
        mock.reset().await;
        serve(503).mount(&mock).await;
        // An hour on the set is fetched again; that fails, and the set it holds verifies.
        assert_eq!(check(t0 + hour + 1).await.unwrap().sub, "alice");
        assert_eq!(
            fetches().await,
            1,
            "the set was not fetched again after an hour"
        );
        // The next 5 s share that failure, and still verify.
        assert!(check(t0 + hour + 2_000).await.is_ok());
        assert_eq!(fetches().await, 1);
        // A day past its hour, a set that cannot be fetched again is no longer trusted.
        let err = check(t0 + 25 * hour + 1).await.unwrap_err();
        assert!(matches!(err, IdTokenError::Keys(_)), "{err}");
        assert!(err.to_string().contains("HTTP 503"), "{err}");
        // Once the provider answers again, so does the check.
        mock.reset().await;
        serve(200).mount(&mock).await;
        assert_eq!(check(t0 + 25 * hour + 10_000).await.unwrap().sub, "alice");
        assert_eq!(fetches().await, 1);
        // A clock stepped back makes the set old, never fresher: it is fetched again.
        assert_eq!(check(t0 + 23 * hour).await.unwrap().sub, "alice");
        assert_eq!(fetches().await, 2);
    }
}
