//! The token vault: AES-256-GCM sealing of everything secret oauthd stores (tokens, PKCE
//! verifiers, device codes, the data apps keep with their states).
//!
//! A sealed value is `[version 1][key id 4][nonce 12][ciphertext + tag]`. The key id lets
//! several keys coexist while values move from an old key to a new one. The associated
//! data (AAD) names what the value is ("connection:spotify/default:refresh_token"), so a
//! sealed value copied into another row or field fails to open.
//!
//! Keys are 32 random bytes written as base64 (standard or URL-safe, padded or not). A key
//! file holds one key per line, the first one current; `#` starts a comment.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 12;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("a vault key is 32 bytes written as base64 (make one with `oauthd keygen`)")]
    BadKey,
    #[error("line {0}: a vault key is 32 bytes written as base64 (make one with `oauthd keygen`)")]
    BadKeyLine(usize),
    #[error("it holds no key (it is empty, or comments only): put back the key oauthd served with; `oauthd keygen` makes one only for a database nothing was sealed in yet")]
    NoKey,
    #[error("value sealed with key {0}, which is not loaded: put that key back in the key file (a key file holds several keys, one per line)")]
    UnknownKey(String),
    #[error("a sealed value failed to open: it was altered, moved to another field, or is not a sealed value")]
    Corrupt,
    #[error("the system random number generator failed")]
    Entropy,
    #[error("key file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("OAUTHD_KEY: {0}")]
    Inline(String),
}

struct VaultKey {
    id: [u8; 4],
    cipher: Aes256Gcm,
}

impl VaultKey {
    fn new(bytes: &[u8; 32]) -> VaultKey {
        let digest = Sha256::new()
            .chain_update(b"oauthd vault key id\0")
            .chain_update(bytes)
            .finalize();
        let [a, b, c, d, ..]: [u8; 32] = digest.into();
        VaultKey {
            id: [a, b, c, d],
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }
}

/// Why the key file at `path` could not be read, with what to do when this user may not.
pub(crate) fn read_failed(path: &Path, e: &std::io::Error) -> String {
    // A database, an archive: no key file is anything but text.
    if e.kind() == std::io::ErrorKind::InvalidData {
        return "it is not text, so no key file (one holds a key per line, as `oauthd keygen` prints it): is this path the key file's?".to_owned();
    }
    // oauthd makes a key file only beside the database; one named by the operator is
    // theirs to make (a first start after uncommenting the example's `key_file`). Not
    // where a running oauthd wrote out its keys when this file went: that copy is the
    // way back, which the message names.
    if e.kind() == std::io::ErrorKind::NotFound && rescued_copies(path).is_empty() {
        return format!(
            "{e}: oauthd makes a key file only beside an SQLite database (`<db>.key`); one \
             given by path is yours to put there: the key file this database, or the other \
             instances on its store, were served with, or, for a store no oauthd has served \
             yet, a new one made once with (umask 077; oauthd keygen > {}). A new key for a \
             store served before leaves what the old one sealed unreadable",
            crate::paths::shell_word(path)
        );
    }
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return e.to_string();
    }
    match crate::paths::ownership(path) {
        Some(whose) => format!(
            "{e}: {whose}; the key file belongs to the user oauthd runs as, as its database \
             does (chown that user {}, keeping mode 600)",
            path.display()
        ),
        None => format!(
            "{e}: this user may not reach it (check the modes of the directories on its path)"
        ),
    }
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Never empty: the key that seals always exists.
pub struct Vault {
    /// Seals, and opens.
    current: VaultKey,
    /// Open only (values sealed before a rotation).
    older: Vec<VaultKey>,
}

/// A sealed value's parts: version, key id, nonce, ciphertext with tag.
fn parts(sealed: &[u8]) -> Option<([u8; 4], &[u8], &[u8])> {
    let (&version, rest) = sealed.split_first()?;
    if version != VERSION {
        return None;
    }
    let (id, rest) = rest.split_at_checked(4)?;
    let (nonce, msg) = rest.split_at_checked(12)?;
    Some((id.try_into().ok()?, nonce, msg))
}

/// Parses one key written as base64 of any common flavour.
pub fn parse_key(text: &str) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let text = text.trim();
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(bytes) = engine.decode(text) {
            let bytes = Zeroizing::new(bytes);
            if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
                return Ok(Zeroizing::new(key));
            }
        }
    }
    Err(VaultError::BadKey)
}

/// A new random key, as text for a key file or `OAUTHD_KEY`.
pub fn generate_key_text() -> Result<Zeroizing<String>, VaultError> {
    let bytes =
        Zeroizing::new(crate::secret::random_bytes::<32>().map_err(|_| VaultError::Entropy)?);
    Ok(Zeroizing::new(STANDARD.encode(bytes.as_slice())))
}

/// Where the vault key comes from. `Debug` never shows an inline key.
#[derive(Clone)]
pub enum KeySource {
    /// `OAUTHD_KEY`: the key itself.
    Inline(Zeroizing<String>),
    /// `OAUTHD_KEY_FILE`, or the file beside the database (created when `create` is set).
    File { path: PathBuf, create: bool },
}

impl KeySource {
    /// `rescue_hint` for the key file this source reads (nothing for `OAUTHD_KEY`).
    pub fn rescue_hint(&self, needed: &[String]) -> String {
        match self {
            KeySource::Inline(_) => String::new(),
            KeySource::File { path, .. } => rescue_hint(path, needed),
        }
    }

    /// Where the key comes from, for messages (never the key itself).
    pub fn describe(&self) -> String {
        match self {
            KeySource::Inline(_) => "OAUTHD_KEY".to_owned(),
            KeySource::File { path, .. } => path.display().to_string(),
        }
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Inline(_) => f.write_str("Inline([redacted])"),
            KeySource::File { path, create } => f
                .debug_struct("File")
                .field("path", path)
                .field("create", create)
                .finish(),
        }
    }
}

impl Vault {
    pub fn from_keys(keys: &[Zeroizing<[u8; 32]>]) -> Result<Vault, VaultError> {
        let (first, rest) = keys.split_first().ok_or(VaultError::NoKey)?;
        // A key listed twice (a line pasted again) is one key: listed once, tried once.
        let mut seen: Vec<&[u8; 32]> = vec![first];
        let mut older: Vec<VaultKey> = Vec::with_capacity(rest.len());
        for key in rest {
            if !seen.contains(&&**key) {
                seen.push(key);
                older.push(VaultKey::new(key));
            }
        }
        Ok(Vault {
            current: VaultKey::new(first),
            older,
        })
    }

    /// Every loaded key, the one that seals first.
    fn keys(&self) -> impl Iterator<Item = &VaultKey> {
        std::iter::once(&self.current).chain(&self.older)
    }

    /// Parses key text: one key per line, first current, `#` comments.
    pub fn from_text(text: &str) -> Result<Vault, VaultError> {
        let keys = numbered_keys(text)
            .map(|(_, key)| key)
            .collect::<Result<Vec<_>, _>>()?;
        Vault::from_keys(&keys)
    }

    /// The keys of the key file at `path` (which must be there) with those of the copies
    /// kept beside it, a prune's (`.before-prune-…`) and running oauthds' (`.loaded-…`):
    /// what opens values sealed before a prune, to compare them. Never to seal with: its
    /// first key is the file's, but a copy's keys are not the file's.
    pub fn with_kept_copies(path: &Path) -> Result<Vault, VaultError> {
        let read = |file: &Path| -> Option<Vec<Zeroizing<[u8; 32]>>> {
            let text = Zeroizing::new(std::fs::read_to_string(file).ok()?);
            numbered_keys(&text).map(|(_, key)| key.ok()).collect()
        };
        let mut keys = read(path).ok_or_else(|| VaultError::File {
            path: path.to_owned(),
            message: "could not be read".to_owned(),
        })?;
        let copies = copies_named(path, ".before-prune-")
            .into_iter()
            .chain(rescued_copies(path));
        keys.extend(copies.filter_map(|copy| read(&copy)).flatten());
        Vault::from_keys(&keys)
    }

    /// Loads the vault, creating a 0600 key file beside the database on first run.
    pub fn load(source: &KeySource) -> Result<Vault, VaultError> {
        Vault::load_text(source).map(|(vault, _)| vault)
    }

    /// `load`, with the key file's text as read (`None` for `OAUTHD_KEY`).
    fn load_text(source: &KeySource) -> Result<(Vault, Option<Zeroizing<String>>), VaultError> {
        match source {
            KeySource::Inline(text) => {
                // A line number says nothing of a one-line variable.
                let vault = Vault::from_text(text).map_err(|e| match e {
                    VaultError::BadKeyLine(_) if !text.trim().contains('\n') => {
                        VaultError::Inline(VaultError::BadKey.to_string())
                    }
                    e => VaultError::Inline(e.to_string()),
                })?;
                Ok((vault, None))
            }
            KeySource::File { path, create } => {
                let file_err = |message: String| VaultError::File {
                    path: path.clone(),
                    message,
                };
                if *create && !path.exists() {
                    write_new_key_file(path).map_err(|e| file_err(e.to_string()))?;
                    log::warn!(
                        "created vault key file {}: back it up with the database; without it the stored tokens and states' data cannot be read",
                        path.display()
                    );
                }
                let text = Zeroizing::new(
                    std::fs::read_to_string(path).map_err(|e| file_err(read_failed(path, &e)))?,
                );
                let vault = Vault::from_text(&text).map_err(|e| file_err(e.to_string()))?;
                Ok((vault, Some(text)))
            }
        }
    }

    /// Ids of all loaded keys, as hex; the first seals.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys().map(|k| hex(&k.id)).collect()
    }

    /// Id of the key that seals, as hex.
    pub fn current_key_id(&self) -> String {
        hex(&self.current.id)
    }

    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let key = &self.current;
        let nonce = crate::secret::random_bytes::<12>().map_err(|_| VaultError::Entropy)?;
        let sealed = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Corrupt)?;
        let mut out = Vec::with_capacity(HEADER + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let (id, nonce, msg) = parts(sealed)
            .filter(|(_, _, msg)| msg.len() >= 16)
            .ok_or(VaultError::Corrupt)?;
        let key = self
            .keys()
            .find(|k| k.id == id)
            .ok_or_else(|| VaultError::UnknownKey(hex(&id)))?;
        key.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Corrupt)
    }

    pub fn seal_str(&self, aad: &str, plaintext: &str) -> Result<Vec<u8>, VaultError> {
        self.seal(aad, plaintext.as_bytes())
    }

    pub fn open_str(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<String>, VaultError> {
        let bytes = self.open(aad, sealed)?;
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Corrupt)
    }

    /// Whether `sealed` was sealed with the current key (false: it needs re-sealing).
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        parts(sealed).is_some_and(|(id, _, _)| id == self.current.id)
    }
}

fn write_new_key_file(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let key = generate_key_text().map_err(std::io::Error::other)?;
    let line = labelled_key_line(&key).map_err(std::io::Error::other)?;
    let mut file = crate::paths::create_private(path)?;
    writeln!(
        file,
        "# oauthd vault key. Back it up with the database; keep it private.\n{}",
        line.as_str()
    )?;
    file.sync_all()
}

/// A key file's keys, each with the number of its line (from 1); text after a `#` is a
/// comment.
fn numbered_keys(
    text: &str,
) -> impl Iterator<Item = (usize, Result<Zeroizing<[u8; 32]>, VaultError>)> + '_ {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            (
                i + 1,
                parse_key(l).map_err(|_| VaultError::BadKeyLine(i + 1)),
            )
        })
}

/// The id of each key in a key file's text, with the number of its line: the ids oauthd's
/// messages name keys by (`rekey`, `check`, a refused start).
pub fn key_ids_by_line(text: &str) -> Result<Vec<(usize, String)>, VaultError> {
    numbered_keys(text)
        .map(|(line, key)| Ok((line, Vault::from_keys(&[key?])?.current_key_id())))
        .collect()
}

/// `key` as a key file's line: the key, and its id in a comment after it.
pub fn labelled_key_line(key: &str) -> Result<Zeroizing<String>, VaultError> {
    let id = Vault::from_text(key)?.current_key_id();
    Ok(Zeroizing::new(format!("{}  # id {id}", key.trim())))
}

/// The vault as the running server uses it: follows its key file, so `oauthd rekey`
/// (another process) takes effect without a restart.
pub struct VaultHandle {
    source: KeySource,
    current: std::sync::RwLock<Loaded>,
}

struct Loaded {
    vault: std::sync::Arc<Vault>,
    /// The key file as last read (or tried: a file that failed to load is not read again
    /// until it changes).
    modified: Fingerprint,
    checked: std::time::Instant,
    /// Whether the last read of a changed key file failed (its keys kept): the next one
    /// that loads says so.
    reload_failed: bool,
    /// The key file's text as last taken: written out beside it when the file is gone or
    /// replaced, as the process's memory is then the only place its keys are.
    text: Option<Zeroizing<String>>,
    /// Where that copy was written, once it was.
    rescued: Option<PathBuf>,
}

/// Writes `text` (the keys a running oauthd holds) to `<path>.loaded-<pid>-<time>`, mode
/// 600, never over another file (nor through a link); returns where.
fn rescue_copy(path: &Path, text: &str) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut tries = 0;
    let (copy, mut file) = loop {
        tries += 1;
        let copy = crate::paths::with_suffix(
            path,
            &format!(".loaded-{}-{secs}-{tries}", std::process::id()),
        );
        match crate::paths::create_private(&copy) {
            Ok(file) => break (copy, file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 100 => {}
            Err(e) => return Err(e),
        }
    };
    writeln!(
        file,
        "# the vault keys oauthd (pid {}) held when its key file went away or was replaced",
        std::process::id()
    )?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(copy)
}

/// Where to find the keys `needed` (every one; none: any copy) after the key file `path`
/// went away or was replaced under a running oauthd: the newest copy it wrote that holds
/// them all, said as a sentence to add to a message, or nothing.
pub fn rescue_hint(path: &Path, needed: &[String]) -> String {
    let holds = |copy: &PathBuf| holds_all(copy, needed);
    if let Some(copy) = rescued_copies(path).into_iter().find(holds) {
        return format!(
            " A running oauthd wrote the keys it held to {} when the key file went away or was replaced:{}",
            copy.display(),
            put_back(&copy, path, needed)
        );
    }
    // Keys a prune removed that a database restored from before it still needs.
    if needed.is_empty() {
        return String::new();
    }
    match copies_named(path, ".before-prune-").into_iter().find(holds) {
        Some(copy) => format!(
            " `oauthd rekey --prune` kept the key file as it was before in {}, which holds them: add the line(s) of key(s) {} from it to {} as further lines (its first line seals: keep it first).",
            copy.display(),
            needed.join(", "),
            path.display()
        ),
        None => String::new(),
    }
}

/// Whether the key file (or copy of one) at `copy` holds every key in `ids`.
fn holds_all(copy: &Path, ids: &[String]) -> bool {
    let Ok(text) = std::fs::read_to_string(copy).map(Zeroizing::new) else {
        return false;
    };
    key_ids(&text).is_ok_and(|held| ids.iter().all(|id| held.contains(id)))
}

/// The copy `rekey --prune` kept of the key file at `path` that shows `new`, a key file
/// without the key `sealing` that this process seals with, to be the file it loaded,
/// rotated and pruned while the process did not look (a terminal command idle across
/// `rekey` and `rekey --prune`): one that sealed with `new`'s sealing key, held `sealing`
/// as an older key, and holds every key of `new`. A key file written over with another key
/// (`oauthd keygen >` it) has none; nor has an older key file put back (its sealing key is
/// the copy's older one: the way back, not forward).
fn pruned_from(path: &Path, sealing: &str, new: &Vault) -> Option<PathBuf> {
    let new_ids = new.key_ids();
    let forward = |copy: &PathBuf| {
        let Ok(text) = std::fs::read_to_string(copy).map(Zeroizing::new) else {
            return false;
        };
        let Ok(held) = key_ids(&text) else {
            return false;
        };
        held.first() == new_ids.first()
            && held.iter().skip(1).any(|id| id == sealing)
            && new_ids.iter().all(|id| held.contains(id))
    };
    copies_named(path, ".before-prune-")
        .into_iter()
        .find(forward)
}

/// How the keys in `copy` go back to the key file `path`: moved into its place when it is
/// gone; added to it when it is there, since it may hold keys that stored values need (a
/// rekey since: a command that held the old keys wrote them out, and a move over the file
/// dropped the new key everything had been re-sealed with).
fn put_back(copy: &Path, path: &Path, needed: &[String]) -> String {
    if !path.exists() {
        return format!(
            " `mv {} {}` puts them back.",
            crate::paths::shell_word(copy),
            crate::paths::shell_word(path)
        );
    }
    let which = match needed {
        [] => "the keys it holds that the key file lacks".to_owned(),
        ids => format!("key(s) {}", ids.join(", ")),
    };
    format!(
        " add the line(s) of {which} from it to {} as further lines (its first line seals: \
         keep it first); moved over the key file, it would drop the keys the file holds now.",
        path.display()
    )
}

/// The copies running oauthds wrote of the keys they held when `path` went away or was
/// replaced (`<path>.loaded-…`), newest first: files of this user only (not links, not
/// another user's planted in a shared directory).
pub fn rescued_copies(path: &Path) -> Vec<PathBuf> {
    copies_named(path, ".loaded-")
}

/// Files of this user beside `path` named `<path's name><infix><digits and dashes>`,
/// newest first.
fn copies_named(path: &Path, infix: &str) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    use std::os::unix::fs::MetadataExt;
    let prefix = format!("{}{infix}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    // The process's user: the owner of its own /proc entry.
    let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return Vec::new();
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix(&prefix).is_some_and(|rest| {
                    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'-')
                })
            })
        })
        .filter_map(|e| {
            let meta = std::fs::symlink_metadata(e.path()).ok()?;
            (meta.file_type().is_file() && meta.uid() == me)
                .then_some((meta.modified().ok()?, e.path()))
        })
        .collect();
    found.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    found.into_iter().map(|(_, p)| p).collect()
}

impl Loaded {
    /// What to tell of the copy of the loaded keys, written once.
    fn rescue(&mut self, source: &KeySource) -> String {
        let (KeySource::File { path, .. }, Some(text)) = (source, &self.text) else {
            return String::new();
        };
        if self.rescued.is_none() {
            match rescue_copy(path, text) {
                Ok(copy) => self.rescued = Some(copy),
                Err(e) => {
                    return format!(
                        " The loaded keys could not be written out ({e}): do not stop this oauthd before the key file is back"
                    )
                }
            }
        }
        match &self.rescued {
            Some(copy) => format!(
                " The keys it holds are written to {} (mode 600):{}",
                copy.display(),
                put_back(copy, path, &[])
            ),
            None => String::new(),
        }
    }
}

/// How often the key file's modification time is looked at.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What tells one version of the key file from another: its inode (a rename, as `rekey`
/// writes it, always makes a new one), modification time and length. `None`: no file
/// (or the key is inline).
type Fingerprint = Option<(u64, std::time::SystemTime, u64)>;

fn modified(source: &KeySource) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    match source {
        KeySource::File { path, .. } => {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.ino(), meta.modified().ok()?, meta.len()))
        }
        KeySource::Inline(_) => None,
    }
}

impl VaultHandle {
    pub fn load(source: KeySource) -> Result<VaultHandle, VaultError> {
        // Looked at before the read: a file replaced meanwhile (a `rekey` during a start)
        // differs from what is recorded, so the first look reads it again.
        let seen = modified(&source);
        let (vault, text) = Vault::load_text(&source)?;
        let loaded = Loaded {
            vault: std::sync::Arc::new(vault),
            modified: seen,
            checked: std::time::Instant::now(),
            reload_failed: false,
            text,
            rescued: None,
        };
        // Only the first load may make a key file: a running server whose key file is
        // gone for a moment keeps its keys, never swaps them for a new one.
        let source = match source {
            KeySource::File { path, .. } => KeySource::File {
                path,
                create: false,
            },
            inline => inline,
        };
        Ok(VaultHandle {
            source,
            current: std::sync::RwLock::new(loaded),
        })
    }

    /// The vault, reloaded first when the key file changed: looked at once a `RECHECK`, or
    /// at once when `force` is set (a value names a key not loaded). An unchanged file is
    /// not read again, however often a value that does not open is presented.
    fn vault(&self, force: bool) -> std::sync::Arc<Vault> {
        {
            let cur = self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let unchanged = matches!(self.source, KeySource::Inline(_))
                || if force {
                    modified(&self.source) == cur.modified
                } else {
                    cur.checked.elapsed() < RECHECK
                };
            if unchanged {
                return cur.vault.clone();
            }
        }
        // A panic elsewhere while the lock was held leaves a loaded vault that is still
        // whole (an Arc and two timestamps): carry on with it.
        let mut cur = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cur.checked = std::time::Instant::now();
        let now_modified = modified(&self.source);
        if now_modified != cur.modified {
            cur.modified = now_modified;
            match Vault::load_text(&self.source) {
                // A file without the key this process seals with is no rekey (which keeps
                // the old keys, and prune never drops the one sealing): another key file
                // written over this one (`oauthd keygen >` it, an old copy restored).
                // Taken, it would leave what was sealed openable only by this process's
                // memory, lost at the next restart.
                Ok((v, _))
                    if !v.key_ids().contains(&cur.vault.current_key_id())
                        && self.pruned_from(&cur.vault, &v).is_none() =>
                {
                    let rescue = cur.rescue(&self.source);
                    log::error!(
                        "vault: the key file {} was replaced by one without key {}, which this oauthd seals with (it holds {}; a rekey keeps the old keys): not taken, the loaded keys ({}) stay in use. Restarted without them, oauthd cannot open what they sealed.{rescue} If the new file was meant, stop oauthd, put the old keys' lines after the new one's, and start it again",
                        self.source.describe(),
                        cur.vault.current_key_id(),
                        v.key_ids().join(", "),
                        cur.vault.key_ids().join(", ")
                    );
                    cur.reload_failed = true;
                }
                Ok((v, text)) => {
                    let new_ids = v.key_ids();
                    let old_ids = cur.vault.key_ids();
                    if let Some(copy) = self.pruned_from(&cur.vault, &v) {
                        log::info!(
                            "vault: the key file was rotated (`oauthd rekey`) and its older keys pruned since this process last looked; sealing with key {} (the file as it was before the prune is kept in {})",
                            v.current_key_id(),
                            copy.display()
                        );
                    } else if v.current_key_id() != cur.vault.current_key_id() {
                        log::info!(
                            "vault: key file changed; sealing with key {}",
                            v.current_key_id()
                        );
                    } else if cur.reload_failed {
                        log::info!(
                            "vault: the key file loads again ({} key(s)); sealing with key {}",
                            v.key_ids().len(),
                            v.current_key_id()
                        );
                    }
                    cur.vault = std::sync::Arc::new(v);
                    cur.text = text;
                    cur.reload_failed = false;
                    if let Some(copy) = cur.rescued.take() {
                        let dropped: Vec<String> = old_ids
                            .into_iter()
                            .filter(|id| !new_ids.contains(id))
                            .collect();
                        if dropped.is_empty() {
                            log::info!(
                                "vault: the key file is back; {} (the keys written out when it went) may go",
                                copy.display()
                            );
                        } else {
                            log::warn!(
                                "vault: the key file is back without key(s) {}, which {} (written out when it went) holds: keep that copy until `oauthd check` says nothing needs them",
                                dropped.join(", "),
                                copy.display()
                            );
                        }
                    }
                }
                // Gone: the process's memory holds the only copy it knows of.
                Err(e) if now_modified.is_none() => {
                    let rescue = cur.rescue(&self.source);
                    log::error!(
                        "vault: cannot reload the key file, keeping the loaded keys ({}): {e}. Restarted without them, oauthd cannot open what they sealed.{rescue}",
                        cur.vault.key_ids().join(", ")
                    );
                    cur.reload_failed = true;
                }
                // There but unreadable (emptied, a line that is no key, no permission):
                // the loaded keys may be nowhere else either.
                Err(e) => {
                    let rescue = cur.rescue(&self.source);
                    log::warn!(
                        "vault: cannot reload the key file, keeping the loaded keys: {e}.{rescue}"
                    );
                    cur.reload_failed = true;
                }
            }
        }
        cur.vault.clone()
    }

    /// The `.before-prune-` copy showing `new`, a reloaded key file without the key
    /// `loaded` seals with, to be the loaded file rotated and pruned (`pruned_from`).
    fn pruned_from(&self, loaded: &Vault, new: &Vault) -> Option<PathBuf> {
        let KeySource::File { path, .. } = &self.source else {
            return None;
        };
        let sealing = loaded.current_key_id();
        if new.key_ids().contains(&sealing) {
            return None;
        }
        pruned_from(path, &sealing, new)
    }

    pub fn seal_str(&self, aad: &str, plaintext: &str) -> Result<Vec<u8>, VaultError> {
        self.vault(false).seal_str(aad, plaintext)
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.vault(false).key_ids()
    }

    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.vault(false).seal(aad, plaintext)
    }

    /// Opens; a value sealed with a key this process has not loaded yet makes it reload.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        match self.vault(false).open(aad, sealed) {
            Err(VaultError::UnknownKey(_)) => self.vault(true).open(aad, sealed),
            other => other,
        }
    }

    pub fn open_str(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<String>, VaultError> {
        let bytes = self.open(aad, sealed)?;
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Corrupt)
    }
}

/// What seals and opens: a vault, or the server's handle on one (which follows its key
/// file).
pub trait Sealer {
    fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError>;
    fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError>;
}

impl Sealer for Vault {
    fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        Vault::seal(self, aad, plaintext)
    }

    fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        Vault::open(self, aad, sealed)
    }
}

impl Sealer for VaultHandle {
    fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        VaultHandle::seal(self, aad, plaintext)
    }

    fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        VaultHandle::open(self, aad, sealed)
    }
}

/// Key ids of the keys in a key file's text, in order (the first seals).
pub fn key_ids(text: &str) -> Result<Vec<String>, VaultError> {
    Ok(Vault::from_text(text)?.key_ids())
}

/// The key id a sealed value names, as hex.
/// Needs only the first 5 bytes (version and key id).
pub fn sealed_key_id(sealed: &[u8]) -> Option<String> {
    let (&version, rest) = sealed.split_first()?;
    let id = rest.get(..4)?;
    (version == VERSION).then(|| hex(id))
}

/// Writes key file text atomically (temp file, fsync, rename), mode 0600.
pub fn write_key_file(path: &Path, text: &str) -> std::io::Result<()> {
    // Written through a link, which stays: a key file kept in a secrets directory and
    // linked where oauthd reads it was replaced by a file of its own, and the new key was
    // in no copy of the file kept there. Only through links that may be trusted.
    let resolved = crate::paths::resolve_trusted(path).map_err(|u| {
        let owner = u.owner.map_or_else(|| "?".to_owned(), |o| o.to_string());
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "leads through {}, a link owned by uid {owner}, neither root nor this user \
                 nor the owner of a directory only they may write to: not written through; \
                 name the file it leads to if you trust it",
                u.link.display()
            ),
        )
    })?;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        // Said with the file the link leads to, and what to do where it may not be written
        // (a read-only mount, a directory of root's): the link itself names neither.
        return write_resolved(&resolved, text).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "a link to {}, which is written (the link stays): {e}{}",
                    resolved.display(),
                    match e.kind() {
                        std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::ReadOnlyFilesystem => {
                            "; where that file may not be written, copy it where this user may \
                             write (mode 600), point the link or OAUTHD_KEY_FILE at the copy, \
                             and run this again"
                        }
                        _ => "",
                    }
                ),
            )
        });
    }
    write_resolved(&resolved, text)
}

/// `write_key_file` on a path that holds no link.
fn write_resolved(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = crate::paths::dir_of(path);
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("oauthd.key")
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut file = crate::paths::create_private(&tmp)?;
    // The file it replaces keeps its owner: root running `oauthd rekey` on the key file
    // of a service that runs as its own user must not leave it a file it cannot read.
    if let Ok(old) = std::fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        let mine = file.metadata()?;
        if (old.uid(), old.gid()) != (mine.uid(), mine.gid()) {
            if let Err(e) = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid())) {
                let _ = std::fs::remove_file(&tmp);
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot give the new key file the owner of the one it replaces \
                         (uid {}, gid {}): {e}; run this as that user or as root",
                        old.uid(),
                        old.gid()
                    ),
                ));
            }
        }
    }
    // A full disk or a failing write leaves no partial file behind.
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_keeps_the_loaded_keys() {
        let key = generate_key_text().unwrap();
        let handle = std::sync::Arc::new(VaultHandle::load(KeySource::Inline(key)).unwrap());
        let holder = handle.clone();
        let _ = std::thread::spawn(move || {
            let _guard = holder.current.write().unwrap();
            panic!("a panic while the lock is held poisons it");
        })
        .join();
        assert!(handle.current.is_poisoned());
        let sealed = handle.seal("aad", b"still works").unwrap();
        assert_eq!(&handle.open("aad", &sealed).unwrap()[..], b"still works");
    }

    #[test]
    fn debug_of_an_inline_key_redacts_it() {
        let source = KeySource::Inline(Zeroizing::new("k1-inline-secret".into()));
        let shown = format!("{source:?}");
        assert!(!shown.contains("inline-secret"), "{shown}");
    }

    fn vault() -> Vault {
        Vault::from_text(&generate_key_text().unwrap()).unwrap()
    }

    #[test]
    fn seal_then_open_round_trips() {
        let v = vault();
        let sealed = v
            .seal_str("connection:a/b:access_token", "tok-123")
            .unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"tok-123"));
        assert_eq!(
            v.open_str("connection:a/b:access_token", &sealed)
                .unwrap()
                .as_str(),
            "tok-123"
        );
    }

    #[test]
    fn a_value_moved_to_another_field_or_row_does_not_open() {
        let v = vault();
        let sealed = v.seal_str("connection:a/b:access_token", "tok").unwrap();
        assert!(matches!(
            v.open("connection:a/b:refresh_token", &sealed),
            Err(VaultError::Corrupt)
        ));
        assert!(matches!(
            v.open("connection:a/c:access_token", &sealed),
            Err(VaultError::Corrupt)
        ));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            v.open("connection:a/b:access_token", &flipped),
            Err(VaultError::Corrupt)
        ));
        assert!(matches!(v.open("x", b"short"), Err(VaultError::Corrupt)));
    }

    #[test]
    fn old_keys_open_and_the_first_key_seals() {
        let old = generate_key_text().unwrap();
        let new = generate_key_text().unwrap();
        let before = Vault::from_text(&old).unwrap();
        let sealed = before.seal_str("f", "secret").unwrap();
        let both =
            Vault::from_text(&format!("{}\n# old\n{}\n", new.as_str(), old.as_str())).unwrap();
        assert_eq!(both.open_str("f", &sealed).unwrap().as_str(), "secret");
        assert!(!both.is_current(&sealed));
        assert!(both.is_current(&both.seal_str("f", "x").unwrap()));
        let only_new = Vault::from_text(&new).unwrap();
        assert!(matches!(
            only_new.open("f", &sealed),
            Err(VaultError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_key_listed_twice_is_one_key() {
        let a = generate_key_text().unwrap();
        let b = generate_key_text().unwrap();
        let vault = Vault::from_text(&format!(
            "{}\n{}\n{}\n{}\n",
            a.as_str(),
            b.as_str(),
            b.as_str(),
            a.as_str()
        ))
        .unwrap();
        let (ida, idb) = (
            Vault::from_text(&a).unwrap().current_key_id(),
            Vault::from_text(&b).unwrap().current_key_id(),
        );
        assert_eq!(vault.key_ids(), [ida, idb]);
    }

    #[test]
    fn keys_parse_in_every_base64_flavour() {
        let bytes = [0xfbu8; 32];
        for text in [
            STANDARD.encode(bytes),
            STANDARD_NO_PAD.encode(bytes),
            URL_SAFE.encode(bytes),
            URL_SAFE_NO_PAD.encode(bytes),
        ] {
            assert_eq!(*parse_key(&format!(" {text}\n")).unwrap(), bytes, "{text}");
        }
        assert!(parse_key("dG9vIHNob3J0").is_err());
        assert!(parse_key("not base64 at all!").is_err());
    }

    #[test]
    fn first_run_creates_a_private_key_file_and_reuses_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let source = KeySource::File {
            path: dir.path().join("oauthd.db.key"),
            create: true,
        };
        let first = Vault::load(&source).unwrap();
        let mode = std::fs::metadata(dir.path().join("oauthd.db.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Vault::load(&source).unwrap();
        assert_eq!(first.current_key_id(), again.current_key_id());
    }
}
