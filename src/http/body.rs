//! JSON request bodies: content type, size limit, syntax, then field by field with an
//! error code per field. Unknown fields are refused so a typo ("ttl" for "ttl_seconds")
//! is an error, not a silently ignored setting.

use super::problem::ApiError;
use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Largest request body accepted, set per app as `web::Data<BodyLimit>`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON object body, checked and parsed, with its text (`opt_verbatim`).
#[derive(Default)]
pub struct JsonObject {
    members: Map<String, Value>,
    /// The fields a reader asked for, in order: what a refusal of an unknown one names.
    asked: Asked,
    /// Zeroed when dropped: an import's body holds tokens.
    text: zeroize::Zeroizing<Vec<u8>>,
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than {limit} bytes"),
    )
}

/// `408 body_timeout`: the body did not arrive whole in time (`detail` says which limit).
pub fn body_timeout(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", detail)
}

fn not_json() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as Content-Type: application/json",
    )
}

impl FromRequest for JsonObject {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = matches!(req.mime_type(), Ok(Some(m))
            if m.type_() == mime::APPLICATION
                && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON)));
        // No body at all is an empty object (every field optional), whatever the content
        // type says.
        let limit = req
            .app_data::<actix_web::web::Data<BodyLimit>>()
            .map_or(64 * 1024, |l| l.0);
        let declared = declared_length(req);
        let mut payload = payload.take();
        Box::pin(async move {
            // A body declared, and not JSON: refused before it is read. No body under any
            // content type (`curl -X POST -d ''` declares a form of no bytes) is no body.
            if !is_json && declared.is_some_and(|n| n > 0) {
                return Err(not_json());
            }
            let body = read_limited(
                &mut payload,
                declared,
                limit,
                || too_large(limit),
                |_| Ok(()),
            )
            .await?;
            // No body is an empty object, with a JSON content type too (`curl -X POST -H
            // 'Content-Type: application/json'`): every field optional means no body works.
            if body.is_empty() {
                return Ok(JsonObject::default());
            }
            if !is_json {
                return Err(not_json());
            }
            JsonObject::parse_owned(body)
        })
    }
}

/// A form (the sign-in, sign-out and connect forms) that could not be read: `408
/// body_timeout` past the body deadline, `413 body_too_large`, else `400 bad_body`. Forms
/// are sent by people's browsers: it is said on a page, as the routes' other refusals are.
pub fn form_error(e: actix_web::error::UrlencodedError, req: &HttpRequest) -> actix_web::Error {
    use actix_web::error::UrlencodedError;
    let error = match &e {
        UrlencodedError::Payload(p) if super::body_deadline::is_deadline(p) => {
            body_timeout(p.to_string())
        }
        UrlencodedError::Overflow { limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("The form is larger than the {limit} bytes oauthd takes."),
        ),
        // Not the parser's words: they may quote what was sent (a sign-in token).
        _ => ApiError::bad_request("bad_body", "Go back, reload the page and send it again."),
    };
    let base = req
        .app_data::<actix_web::web::Data<super::AppState>>()
        .map_or("", |app| app.base_path.as_str());
    // The connect form is an app's flow's (a person an app sent here): no way "back" to
    // the administrator's sign-in.
    let from_app = req.path().contains("/connect/");
    let body = format!(
        "<p>{}</p><p class=\"code\">{}</p>",
        super::pages::escape(&error.detail),
        super::pages::escape(error.code)
    );
    let page = super::pages::page_for(
        from_app,
        base,
        error.status.as_u16(),
        "The form could not be read",
        &body,
    );
    actix_web::error::InternalError::from_response(e, page).into()
}

/// The body's length as its `Content-Length` declares it, when it does.
pub fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// What went wrong with a body, in words (actix-web's own end in a `Debug` form:
/// "payload reached EOF before completing: None").
fn payload_words(e: &actix_web::error::PayloadError) -> String {
    use actix_web::error::PayloadError;
    match e {
        PayloadError::Incomplete(_) => {
            "it ended before its end (the connection closed, or a chunked body was cut short)"
                .to_owned()
        }
        PayloadError::EncodingCorrupted => "its transfer coding is not valid".to_owned(),
        PayloadError::Overflow => "it is larger than it was said to be".to_owned(),
        PayloadError::UnknownLength => "its length is not known".to_owned(),
        other => other.to_string(),
    }
}

/// Reads a whole request body of at most `limit` bytes: refused by its declared length
/// before reading, else as soon as it runs past the limit. `admit` sees each chunk's size
/// before it is kept and may refuse it.
pub async fn read_limited<S>(
    payload: &mut S,
    declared: Option<u64>,
    limit: usize,
    too_large: impl Fn() -> ApiError,
    mut admit: impl FnMut(usize) -> Result<(), ApiError>,
) -> Result<Vec<u8>, ApiError>
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>>
        + Unpin,
{
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            if super::body_deadline::is_deadline(&e) {
                body_timeout(e.to_string())
            } else {
                ApiError::bad_request(
                    "bad_body",
                    format!("could not read the body: {}", payload_words(&e)),
                )
            }
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        admit(chunk.len())?;
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON value in which no object names a member twice. The JSON RFC leaves duplicates'
/// meaning open and parsers differ (first wins, last wins): a proxy in front of oauthd
/// that reads `{"namespace": "a", "namespace": "b"}` as `a` would check one namespace
/// while oauthd used the other. So a duplicate anywhere in a body is `malformed_json`.
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json hands no NaN or infinity; `from_f64` would make one null.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let Unique(v) = map.next_value()?;
            if members.contains_key(&name) {
                let shown: String = name.chars().take(64).collect();
                return Err(serde::de::Error::custom(format_args!(
                    "the member {shown:?} appears more than once"
                )));
            }
            members.insert(name, v);
        }
        Ok(Value::Object(members))
    }
}

impl JsonObject {
    /// Parses a complete body: a JSON object whose objects name no member twice, or
    /// `malformed_json`.
    pub fn parse(body: &[u8]) -> Result<JsonObject, ApiError> {
        JsonObject::parse_owned(body.to_vec())
    }

    fn parse_owned(text: Vec<u8>) -> Result<JsonObject, ApiError> {
        let text = zeroize::Zeroizing::new(text);
        match serde_json::from_slice::<Unique>(&text).map(|u| u.0) {
            Ok(Value::Object(members)) => Ok(JsonObject {
                members,
                asked: Asked::default(),
                text,
            }),
            Ok(_) => Err(ApiError::bad_request(
                "malformed_json",
                "the body must be a JSON object",
            )),
            Err(e) => {
                // serde_json's words for half a surrogate pair (`"\ud800"`, which some
                // encoders let through) speak of hex escapes, not of what is wrong.
                let said = e.to_string();
                // Valid JSON past what oauthd reads is said as that, not as invalid JSON.
                let beyond = if said.starts_with("number out of range") {
                    Some("a number past what a double holds (about 1.8e308); send it as a string")
                } else if said.starts_with("recursion limit exceeded") {
                    Some("arrays and objects nested more than 127 deep, the body's own object counting as one")
                } else {
                    None
                };
                if let Some(beyond) = beyond {
                    return Err(ApiError::bad_request(
                        "malformed_json",
                        format!("the body is JSON oauthd does not take: {beyond} ({said})"),
                    ));
                }
                let hint = if said.contains("hex escape") || said.contains("surrogate") {
                    " (a \\u escape of half a UTF-16 surrogate pair, \\ud800 to \\udfff alone, is no character: the string is not text)"
                } else {
                    ""
                };
                Err(ApiError::bad_request(
                    "malformed_json",
                    format!("the body is not valid JSON: {said}{hint}"),
                ))
            }
        }
    }
}

/// The names of the fields a reader asked for, without allocating (a reader asks for ten
/// at most; past `ASKED_MAX` the rest go unnamed).
#[derive(Default)]
struct Asked {
    names: [&'static str; ASKED_MAX],
    len: usize,
}

const ASKED_MAX: usize = 12;

impl Asked {
    /// On every field a request reads: kept cheap (a name asked twice is dropped only
    /// when a refusal names them).
    fn push(&mut self, name: &'static str) {
        if let Some(slot) = self.names.get_mut(self.len) {
            *slot = name;
            self.len += 1;
        }
    }

    /// "this endpoint takes: a, b" (or that it takes none), for a refusal.
    fn takes(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for name in self.names.get(..self.len).unwrap_or_default() {
            if !names.contains(name) {
                names.push(name);
            }
        }
        match names.as_slice() {
            [] => "this endpoint takes no fields".to_owned(),
            names => format!("this endpoint takes: {}", names.join(", ")),
        }
    }
}

fn as_string(v: Value) -> Result<String, &'static str> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err("must be a string"),
    }
}

fn invalid(name: &str, code: &'static str, why: &str) -> ApiError {
    ApiError::bad_request(code, format!("{name} {why}"))
}

impl JsonObject {
    /// Removes and returns a field; `None` when absent.
    fn take(&mut self, name: &'static str) -> Option<Value> {
        self.asked.push(name);
        self.members.remove(name)
    }

    /// A required string field; `code` is the error code for a missing or non-string value.
    pub fn string(&mut self, name: &'static str, code: &'static str) -> Result<String, ApiError> {
        match self.take(name) {
            Some(v) => as_string(v).map_err(|why| invalid(name, code, why)),
            None => Err(ApiError::bad_request(code, format!("{name} is required"))),
        }
    }

    /// An optional string field; `null` counts as absent.
    pub fn opt_string(
        &mut self,
        name: &'static str,
        code: &'static str,
    ) -> Result<Option<String>, ApiError> {
        self.optional(name, code, as_string)
    }

    /// An optional positive whole number; `null` counts as absent.
    pub fn opt_positive_int(
        &mut self,
        name: &'static str,
        code: &'static str,
    ) -> Result<Option<u64>, ApiError> {
        // A number written with a fraction or an exponent is read as a double, which rounds
        // `0.9999999999999999999` to 1: whole only if the text as sent is.
        let as_sent = match self.members.get(name) {
            Some(Value::Number(n)) if !n.is_u64() => self.sent(name),
            _ => None,
        };
        self.optional(name, code, |v| match v {
            Value::Number(_) if as_sent.is_some_and(|t| !crate::numbers::written_whole(&t)) => {
                Err("must be a whole number of at least 1")
            }
            Value::Number(n) => match crate::numbers::whole_number(&n) {
                Some(v) if v > 0 => Ok(v),
                // `1e308`, `18446744073709551616`: whole, just beyond every limit.
                None if n.as_f64().is_some_and(|f| f >= 1e15 && f.fract() == 0.0) => {
                    Err("is far larger than any value allowed here")
                }
                _ => Err("must be a whole number of at least 1"),
            },
            _ => Err("must be a number"),
        })
    }

    /// An optional true/false; `null` counts as absent.
    pub fn opt_bool(
        &mut self,
        name: &'static str,
        code: &'static str,
    ) -> Result<Option<bool>, ApiError> {
        self.optional(name, code, |v| v.as_bool().ok_or("must be true or false"))
    }

    /// An optional field, read by `read` (which says what is wrong with a bad value);
    /// `null` counts as absent.
    fn optional<T>(
        &mut self,
        name: &'static str,
        code: &'static str,
        read: impl FnOnce(Value) -> Result<T, &'static str>,
    ) -> Result<Option<T>, ApiError> {
        match self.take(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => read(v).map(Some).map_err(|why| invalid(name, code, why)),
        }
    }

    /// An optional field of any JSON type, as its text was sent (members in their order,
    /// numbers as written) without the whitespace between tokens: what an app stores, it
    /// gets back byte for byte. `null` is none.
    pub fn opt_verbatim(&mut self, name: &'static str) -> Option<crate::states::JsonText> {
        let parsed = self.take(name).filter(|v| !v.is_null())?;
        let sent = self.with_sent(name, crate::states::JsonText::compact);
        Some(sent.unwrap_or_else(|| crate::states::JsonText::of(&parsed)))
    }

    /// A member's text as it was sent.
    fn sent(&self, name: &str) -> Option<String> {
        self.with_sent(name, |raw| raw.get().to_owned())
    }

    fn with_sent<T>(&self, name: &str, read: impl FnOnce(&RawValue) -> T) -> Option<T> {
        // The body parsed whole before, with no member named twice.
        serde_json::from_slice::<HashMap<String, &RawValue>>(&self.text)
            .ok()
            .and_then(|members| members.get(name).map(|raw| read(raw)))
    }

    /// The fields not taken yet, for a reader of its own.
    pub fn into_map(self) -> Map<String, Value> {
        self.members
    }

    /// Refuses whatever fields were not taken.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.members.keys().next() {
            None => Ok(()),
            Some(field) => {
                let shown: String = field.chars().take(64).collect();
                Err(ApiError::bad_request(
                    "unknown_field",
                    format!("unknown field {shown:?}; {}", self.asked.takes()),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::JsonObject;
    use serde_json::json;

    #[test]
    fn a_number_is_whole_as_written_not_as_a_double_rounds_it() {
        for (body, whole) in [
            (r#"{"n":600}"#, Some(600)),
            (r#"{"n":600.0}"#, Some(600)),
            (r#"{"n":6e2}"#, Some(600)),
            (r#"{"n":0.9999999999999999999}"#, None),
            (r#"{"n":86400.000000000000001}"#, None),
            (r#"{"n":100.0000000000000001}"#, None),
        ] {
            let mut o = JsonObject::parse(body.as_bytes()).unwrap();
            assert_eq!(
                o.opt_positive_int("n", "invalid_n").ok().flatten(),
                whole,
                "{body}"
            );
        }
    }

    #[test]
    fn half_a_surrogate_pair_is_said_to_be_no_character() {
        for body in [
            r#"{"s":"\ud800"}"#,
            r#"{"s":"\ud800x"}"#,
            r#"{"s":"\udc00"}"#,
        ] {
            let Err(e) = JsonObject::parse(body.as_bytes()) else {
                panic!("{body} parsed");
            };
            assert!(
                e.detail.contains("half a UTF-16 surrogate pair"),
                "{body}: {}",
                e.detail
            );
        }
    }

    #[test]
    fn a_member_named_twice_anywhere_is_malformed() {
        for body in [
            r#"{"namespace":"a","namespace":"b"}"#,
            r#"{"data":{"x":1,"y":[{"k":1},{"k":2,"k":3}]}}"#,
            r#"{"a":1,"\u0061":2}"#,
        ] {
            let e = JsonObject::parse(body.as_bytes()).err().expect(body);
            assert_eq!(e.code, "malformed_json", "{body}");
            assert!(e.detail.contains("more than once"), "{}", e.detail);
        }
    }

    #[test]
    fn a_whole_number_beyond_every_limit_is_said_to_be_too_large() {
        for (body, said) in [
            (r#"{"ttl_seconds":1e308}"#, "ttl_seconds is far larger"),
            (
                r#"{"ttl_seconds":18446744073709551616}"#,
                "ttl_seconds is far larger",
            ),
            (
                r#"{"ttl_seconds":0}"#,
                "ttl_seconds must be a whole number of at least 1",
            ),
            (
                r#"{"ttl_seconds":1.5}"#,
                "ttl_seconds must be a whole number of at least 1",
            ),
            (
                r#"{"ttl_seconds":1000000000000000.5}"#,
                "ttl_seconds must be a whole number of at least 1",
            ),
        ] {
            let Ok(mut parsed) = JsonObject::parse(body.as_bytes()) else {
                panic!("{body} did not parse");
            };
            let e = parsed
                .opt_positive_int("ttl_seconds", "invalid_ttl")
                .expect_err(body);
            assert_eq!(e.code, "invalid_ttl");
            assert!(e.detail.starts_with(said), "{body}: {}", e.detail);
        }
    }

    #[test]
    fn a_body_parses_to_the_value_serde_json_makes() {
        let body = json!({
            "s": "x\u{1F600}", "n": -3, "u": u64::MAX, "f": 0.1, "big": 1e300,
            "b": true, "null": null, "list": [1, [2, {"k": {}}], []], "o": {"k": "v"}
        });
        let text = body.to_string();
        let Ok(parsed) = JsonObject::parse(text.as_bytes()) else {
            panic!("{text} did not parse");
        };
        assert_eq!(serde_json::Value::Object(parsed.into_map()), body);
    }
}
