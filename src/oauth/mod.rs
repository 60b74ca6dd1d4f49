//! OAuth client side: the provider catalogue and the protocol calls (code exchange,
//! refresh, revocation). Knows nothing of storage or HTTP serving.

pub mod flows;
pub mod provider;

pub use provider::{ClientAuth, Provider, ProviderConfig};

/// Reads a response body, refusing more than `limit` bytes (a provider answering with an
/// endless body must not exhaust memory).
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the response is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
