//! Property tests (proptest) over the parsers that read untrusted input: the state API's
//! bodies and the provider's callback query. Bounded by case count, so they run in CI.
//! Properties: no input panics; every refusal is a 4xx with a stable code; what a valid
//! input says is exactly what the parser returns.

use super::body::JsonObject;
use super::states::{consume_request, create_request};
use crate::broker::CallbackQuery;
use crate::secret::StateValue;
use actix_web::web;
use proptest::prelude::*;
use serde_json::{json, Value};

const CASES: u32 = 3000;

/// Arbitrary JSON values, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,50}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies that look like API requests: the real field names with arbitrary values, plus
/// sometimes a stray field.
fn api_body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("namespace".to_owned()),
        Just("state".to_owned()),
        Just("ttl_seconds".to_owned()),
        Just("data".to_owned()),
        Just("subject".to_owned()),
        Just("secret".to_owned()),
        Just("max_attempts".to_owned()),
        Just("replace".to_owned()),
        Just("sliding".to_owned()),
        Just("max_lifetime_seconds".to_owned()),
        "[a-z_]{1,10}",
    ];
    let value = prop_oneof![
        any_json(),
        "[a-z0-9:._*-]{0,80}".prop_map(Value::from),
        "[A-Za-z0-9_-]{43}".prop_map(Value::from),
        (0u64..200_000).prop_map(Value::from),
    ];
    prop::collection::btree_map(field, value, 0..5)
        .prop_map(|m| serde_json::to_vec(&m).unwrap_or_default())
}

fn refusal_is_a_clean_4xx(e: &super::problem::ApiError) -> Result<(), TestCaseError> {
    prop_assert!(e.status.is_client_error(), "{} {}", e.status, e.code);
    prop_assert!(!e.code.is_empty());
    Ok(())
}

fn parse_both(bytes: &[u8]) -> Result<(), TestCaseError> {
    for which in 0..2 {
        let parsed = JsonObject::parse(bytes);
        let outcome = match (which, parsed) {
            (_, Err(e)) => Err(e),
            (0, Ok(obj)) => create_request(obj).map(|_| ()),
            (_, Ok(obj)) => consume_request(obj).map(|_| ()),
        };
        if let Err(e) = outcome {
            refusal_is_a_clean_4xx(&e)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn state_api_bodies_of_arbitrary_bytes_never_panic_and_refuse_with_4xx(
        bytes in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        parse_both(&bytes)?;
    }

    #[test]
    fn state_api_bodies_shaped_like_requests_never_panic_and_refuse_with_4xx(bytes in api_body()) {
        parse_both(&bytes)?;
    }

    #[test]
    fn a_valid_create_request_reads_back_exactly(
        ns in "[a-z][a-z0-9_.-]{0,20}(:[a-z0-9_.-]{1,20})?",
        ttl in prop::option::of(1u64..100_000),
        data in prop::option::of(any_json()),
    ) {
        let mut body = serde_json::Map::new();
        body.insert("namespace".into(), json!(ns));
        if let Some(t) = ttl { body.insert("ttl_seconds".into(), json!(t)); }
        if let Some(d) = &data { body.insert("data".into(), d.clone()); }
        // Sent with whitespace between the tokens: kept without it, and otherwise as sent.
        let bytes = serde_json::to_vec_pretty(&body).unwrap();
        let obj = JsonObject::parse(&bytes).map_err(|e| TestCaseError::fail(e.detail))?;
        let (got_ns, got) =
            create_request(obj).map_err(|e| TestCaseError::fail(e.detail))?;
        prop_assert_eq!(got_ns.as_str(), ns.as_str());
        prop_assert_eq!(got.ttl_seconds, ttl);
        let compact = data.filter(|d| !d.is_null()).map(|d| d.to_string());
        prop_assert_eq!(got.data.as_ref().map(|t| t.as_str()), compact.as_deref());
    }

    #[test]
    fn callback_queries_of_arbitrary_text_never_panic(
        state in "[A-Za-z0-9_-]{42,44}|.{0,60}",
        rest in ".{0,240}",
        lead in any::<bool>(),
    ) {
        // Random text alone almost never holds a `state` of the shape oauthd issues: half
        // the cases lead with one of that shape or of one character more or less.
        let query = if lead { format!("state={state}&{rest}") } else { rest };
        if let Ok(q) = web::Query::<CallbackQuery>::from_query(&query) {
            if let Some(state) = &q.state {
                // Only the exact shape oauthd issues is ever looked up.
                let shaped = state.len() == 43
                    && state.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                prop_assert_eq!(StateValue::parse(state).is_some(), shaped);
            }
        }
    }

    #[test]
    fn callback_queries_read_back_exactly_whatever_the_encoding(
        code in prop::option::of(".{0,60}"),
        state in prop::option::of("[A-Za-z0-9_-]{43}"),
        iss in prop::option::of(".{0,60}"),
        error in prop::option::of("[a-z_]{1,30}"),
        junk in prop::collection::vec(("[a-z]{1,8}", ".{0,20}"), 0..4),
    ) {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in [("code", &code), ("state", &state), ("iss", &iss), ("error", &error)] {
            if let Some(v) = v { pairs.push((k.to_owned(), v.clone())); }
        }
        // Unknown parameters (providers add their own) must not break parsing.
        for (k, v) in junk {
            if !["code", "state", "iss", "error", "error_description"].contains(&k.as_str()) {
                pairs.push((k, v));
            }
        }
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&pairs)
            .finish();
        let q = web::Query::<CallbackQuery>::from_query(&query)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .into_inner();
        prop_assert_eq!(q.code, code);
        prop_assert_eq!(q.state.clone(), state);
        prop_assert_eq!(q.iss, iss);
        prop_assert_eq!(q.error, error);
        if let Some(s) = &q.state { prop_assert!(StateValue::parse(s).is_some()); }
    }
}
