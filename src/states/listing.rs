//! A subject's states a page at a time, and the cursor that says where the next begins.

use super::StateView;

/// A page of a subject's states, opened.
#[derive(Debug)]
pub struct SubjectListing {
    pub states: Vec<StateView>,
    /// Where the next page starts, when more follow.
    pub next: Option<ListingCursor>,
}

/// Where a listing goes on: after the state created at `created_at_ms` whose stored key
/// starts with `key_prefix`. Apps see it as an opaque text (`Display`, `parse`): 32
/// characters of base64url, which say the state's creation time and what its id says (and
/// the 6 bits of the key a version 8 UUID leaves out): nothing that leads to its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListingCursor {
    created_at_ms: i64,
    key_prefix: [u8; 16],
}

impl ListingCursor {
    pub(super) fn at((created_at_ms, key_prefix): (i64, [u8; 16])) -> ListingCursor {
        ListingCursor {
            created_at_ms,
            key_prefix,
        }
    }

    /// A cursor as `Display` writes it; `None` for any other text.
    pub fn parse(text: &str) -> Option<ListingCursor> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let (at, prefix) = bytes.split_first_chunk::<8>()?;
        Some(ListingCursor {
            created_at_ms: i64::from_be_bytes(*at),
            key_prefix: prefix.try_into().ok()?,
        })
    }

    /// Where the page after this cursor starts (`SubjectPage::after`).
    pub fn position(self) -> (i64, [u8; 16]) {
        (self.created_at_ms, self.key_prefix)
    }
}

impl std::fmt::Display for ListingCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::Engine;
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&self.created_at_ms.to_be_bytes());
        bytes[8..].copy_from_slice(&self.key_prefix);
        f.write_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }
}
