//! JSON request bodies: content type, size limit, syntax, then field by field with an
//! error code per field. Unknown fields are refused so a typo ("ttl" for "ttl_seconds")
//! is an error, not a silently ignored setting.

use super::problem::ApiError;
use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde_json::{Map, Value};

/// Largest request body accepted, set per app as `web::Data<BodyLimit>`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON object body, checked and parsed.
pub struct JsonObject(Map<String, Value>);

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
        // No body at all (and no content type) is an empty object: every field optional.
        let no_content_type = !req.headers().contains_key(header::CONTENT_TYPE);
        let limit = req
            .app_data::<actix_web::web::Data<BodyLimit>>()
            .map_or(64 * 1024, |l| l.0);
        let declared = declared_length(req);
        let mut payload = payload.take();
        Box::pin(async move {
            let may_be_empty = no_content_type && declared.is_none_or(|n| n == 0);
            if !(is_json || may_be_empty) {
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
                return Ok(JsonObject(Map::new()));
            }
            if !is_json {
                return Err(not_json());
            }
            JsonObject::parse(&body)
        })
    }
}

/// A form (the sign-in and connect forms) that could not be read, as the JSON routes
/// answer it: `408 body_timeout` past the body deadline, else `400 bad_body`.
pub fn form_error(e: actix_web::error::UrlencodedError, _req: &HttpRequest) -> actix_web::Error {
    use actix_web::error::UrlencodedError;
    let error = match &e {
        UrlencodedError::Payload(p) if super::body_deadline::is_deadline(p) => {
            body_timeout(p.to_string())
        }
        UrlencodedError::Overflow { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            e.to_string(),
        ),
        // Not the parser's words: they may quote what was sent (a sign-in token).
        _ => ApiError::bad_request("bad_body", "the form could not be read"),
    };
    error.into()
}

/// The body's length as its `Content-Length` declares it, when it does.
pub fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
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
                ApiError::bad_request("bad_body", format!("could not read the body: {e}"))
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

impl JsonObject {
    /// Parses a complete body: a JSON object, or `malformed_json`.
    pub fn parse(body: &[u8]) -> Result<JsonObject, ApiError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(JsonObject(map)),
            Ok(_) => Err(ApiError::bad_request(
                "malformed_json",
                "the body must be a JSON object",
            )),
            Err(e) => Err(ApiError::bad_request(
                "malformed_json",
                format!("the body is not valid JSON: {e}"),
            )),
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
    fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name)
    }

    /// A required string field; `code` is the error code for a missing or non-string value.
    pub fn string(&mut self, name: &str, code: &'static str) -> Result<String, ApiError> {
        match self.take(name) {
            Some(v) => as_string(v).map_err(|why| invalid(name, code, why)),
            None => Err(ApiError::bad_request(code, format!("{name} is required"))),
        }
    }

    /// An optional string field; `null` counts as absent.
    pub fn opt_string(
        &mut self,
        name: &str,
        code: &'static str,
    ) -> Result<Option<String>, ApiError> {
        self.optional(name, code, as_string)
    }

    /// An optional positive whole number; `null` counts as absent.
    pub fn opt_positive_int(
        &mut self,
        name: &str,
        code: &'static str,
    ) -> Result<Option<u64>, ApiError> {
        self.optional(name, code, |v| match v {
            Value::Number(n) => crate::numbers::whole_number(&n)
                .filter(|v| *v > 0)
                .ok_or("must be a whole number of at least 1"),
            _ => Err("must be a number"),
        })
    }

    /// An optional true/false; `null` counts as absent.
    pub fn opt_bool(&mut self, name: &str, code: &'static str) -> Result<Option<bool>, ApiError> {
        self.optional(name, code, |v| v.as_bool().ok_or("must be true or false"))
    }

    /// An optional field, read by `read` (which says what is wrong with a bad value);
    /// `null` counts as absent.
    fn optional<T>(
        &mut self,
        name: &str,
        code: &'static str,
        read: impl FnOnce(Value) -> Result<T, &'static str>,
    ) -> Result<Option<T>, ApiError> {
        match self.take(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => read(v).map(Some).map_err(|why| invalid(name, code, why)),
        }
    }

    /// An optional field of any JSON type.
    pub fn opt_any(&mut self, name: &str) -> Option<Value> {
        self.take(name)
    }

    /// The fields not taken yet, for a reader of its own.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }

    /// Refuses whatever fields were not taken.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(field) => {
                let shown: String = field.chars().take(64).collect();
                Err(ApiError::bad_request(
                    "unknown_field",
                    format!("unknown field {shown:?}"),
                ))
            }
        }
    }
}
