//! Where the data lives: the SQLite file (the default) or a Redis server shared by several
//! oauthd instances. Parsed from `--store`, `OAUTHD_STORE` (or `OAUTHD_STORE_FILE`) and the
//! config file's `store`.

use url::Url;
use zeroize::Zeroizing;

pub const DEFAULT_REDIS_PREFIX: &str = "oauthd:";

#[derive(Debug, Clone)]
pub enum StoreTarget {
    /// The SQLite file named by `db`.
    Sqlite,
    Redis(RedisTarget),
}

/// A Redis URL (it may hold a password) and the prefix of every key oauthd writes.
#[derive(Clone)]
pub struct RedisTarget {
    url: Zeroizing<String>,
    pub prefix: String,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RedisTarget({}, prefix {:?})",
            self.display(),
            self.prefix
        )
    }
}

impl RedisTarget {
    /// The URL with its password, for the client only.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the URL holds a password (its own, or one given apart and filled in).
    pub fn has_password(&self) -> bool {
        Url::parse(&self.url).is_ok_and(|u| u.password().is_some())
    }

    /// The URL as logs may show it: scheme, host, port and database, never a password.
    pub fn display(&self) -> String {
        self.shown(false)
    }

    /// The URL to give oauthd for this store, the password left out: `display` with the
    /// user name (a Redis ACL user), which the password given apart needs.
    pub fn display_with_user(&self) -> String {
        self.shown(true)
    }

    fn shown(&self, with_user: bool) -> String {
        match Url::parse(&self.url) {
            Ok(u) => format!(
                "{}://{}{}:{}{}",
                u.scheme(),
                match u.username() {
                    user if with_user && !user.is_empty() => format!("{user}@"),
                    _ => String::new(),
                },
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(6379),
                if u.path().is_empty() { "/0" } else { u.path() }
            ),
            Err(_) => "redis".to_owned(),
        }
    }
}

/// Parses a store URL. `password` (from `OAUTHD_REDIS_PASSWORD[_FILE]`) fills in a Redis
/// URL that has none, so the URL itself can live in a world-readable config file.
/// What to do with a Redis password that holds characters a URL gives a meaning.
const ENCODE_PASSWORD: &str = "in the URL, a password's '/', '?', '#' and '%' must be \
    written %2F, %3F, %23 and %25; or give the password as it is in \
    OAUTHD_REDIS_PASSWORD_FILE (the URL without one)";

pub fn parse(
    text: &str,
    prefix: Option<String>,
    password: Option<Zeroizing<String>>,
) -> Result<StoreTarget, String> {
    let text = text.trim();
    if text == "sqlite" {
        return Ok(StoreTarget::Sqlite);
    }
    let mut url = Url::parse(text).map_err(|_| {
        let expected =
            "expected redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://… for TLS, or \"sqlite\"";
        // A password holding `/`, `?` or `#` ends the address's host part early.
        match text.contains('@') {
            true => format!("{expected}; {ENCODE_PASSWORD}"),
            false => expected.to_owned(),
        }
    })?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(format!(
            "unsupported scheme {:?}: use redis:// or rediss:// (TLS), or \"sqlite\" for the database file",
            url.scheme()
        ));
    }
    // An `@` after a `/`, `#` or `?`: a password holding one of those, read as where the
    // URL's path, fragment or query starts, and the password's tail taken for the host
    // (`redis://user:1234/tail@host/0` reads as host `user`, port 1234).
    let cut = [Some(url.path()), url.fragment(), url.query()]
        .into_iter()
        .flatten()
        .any(|part| part.contains('@'));
    if cut {
        return Err(format!(
            "the Redis URL's password holds '/', '#' or '?', which end the address: {ENCODE_PASSWORD}"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the Redis URL needs a host, e.g. redis://127.0.0.1:6379/0".into());
    }
    let db = url.path().trim_start_matches('/');
    // Not echoed: what follows the host may be a password's tail.
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(
            "the Redis database (after the host's `/`) must be a number: \
                    redis://HOST:PORT/0"
                .into(),
        );
    }
    if let Some(pw) = password {
        if url.password().is_none() && url.set_password(Some(&pw)).is_err() {
            return Err("cannot put OAUTHD_REDIS_PASSWORD into this URL".into());
        }
    }
    let prefix = prefix.unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned());
    if prefix.is_empty()
        || prefix.len() > 64
        || prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("redis_prefix must be 1 to 64 characters without spaces".into());
    }
    Ok(StoreTarget::Redis(RedisTarget {
        url: Zeroizing::new(url.to_string()),
        prefix,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(text: &str, pw: Option<&str>) -> RedisTarget {
        match parse(text, None, pw.map(|p| Zeroizing::new(p.to_owned()))) {
            Ok(StoreTarget::Redis(t)) => t,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn parses_redis_urls_and_never_shows_the_password() {
        let t = redis("redis://:hunter2hunter2@10.0.0.5:6380/3", None);
        assert_eq!(t.display(), "redis://10.0.0.5:6380/3");
        assert!(!format!("{t:?}").contains("hunter2"));
        assert!(t.url().contains("hunter2"));
        assert!(t.has_password());
        assert_eq!(t.display_with_user(), "redis://10.0.0.5:6380/3");
        let acl = redis("redis://oauthd:hunter2hunter2@10.0.0.5:6380/3", None);
        assert_eq!(acl.display(), "redis://10.0.0.5:6380/3");
        assert_eq!(acl.display_with_user(), "redis://oauthd@10.0.0.5:6380/3");
        assert_eq!(t.prefix, "oauthd:");
        let open = redis("rediss://cache.example", None);
        assert_eq!(open.display(), "rediss://cache.example:6379/0");
        assert!(!open.has_password());
    }

    /// A password holding `#` or `?` made the rest of it the host (`redis://:p@ss#w@host`
    /// was a Redis at `ss`), and one holding `/` an unreadable URL: both say to encode it.
    #[test]
    fn a_password_with_characters_a_url_gives_a_meaning_is_named() {
        for text in [
            "redis://:p@ss#word@127.0.0.1:6379/0",
            "redis://:pa?ss@w@127.0.0.1/0",
            "redis://:pa/ss@127.0.0.1/0",
            "redis://default:1234/tail@127.0.0.1/0",
        ] {
            let said = parse(text, None, None).unwrap_err();
            assert!(
                said.contains("%23") && said.contains("OAUTHD_REDIS_PASSWORD_FILE"),
                "{text}: {said}"
            );
            assert!(
                !said.contains("ss@") && !said.contains("#word") && !said.contains("tail"),
                "{said}"
            );
        }
        // An `@` in a password is read as the password's.
        assert!(redis("redis://:p@ss@127.0.0.1/0", None)
            .url()
            .contains("p%40ss@127.0.0.1"));
        // A fragment of redis' own (TLS without verification) is no password.
        redis("rediss://127.0.0.1:6380/0#insecure", None);
    }

    #[test]
    fn password_from_the_environment_fills_a_url_without_one() {
        let t = redis("redis://127.0.0.1:6379/0", Some("s3cret-s3cret"));
        assert!(t.url().contains(":s3cret-s3cret@"), "{}", t.url());
        let t = redis("redis://:inurl@127.0.0.1/0", Some("other"));
        assert!(t.url().contains(":inurl@") && !t.url().contains("other"));
    }

    #[test]
    fn rejects_what_is_not_a_store() {
        for bad in [
            "postgres://x/y",
            "redis://",
            "redis://h/abc",
            "nonsense",
            "",
        ] {
            assert!(parse(bad, None, None).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            parse("sqlite", None, None),
            Ok(StoreTarget::Sqlite)
        ));
        assert!(parse("redis://h/0", Some("has space".into()), None).is_err());
    }
}
