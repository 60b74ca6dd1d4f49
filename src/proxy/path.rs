//! Where a proxied request goes: the provider's API base plus the caller's path, and
//! nowhere else. The path is checked segment by segment as it arrived (percent-encoded),
//! then the joined URL is checked again against the base.

use url::Url;

/// Why a path was refused; `Display` is the problem's detail (never the path itself:
/// a query may carry secrets, and the path is the caller's own).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("an empty path segment (`//`) is not allowed")]
    EmptySegment,
    #[error(
        "`.`, `..` and other segments of only dots and spaces are not allowed, encoded or not"
    )]
    DotSegment,
    #[error("the path may not carry a scheme (`name:` as its first segment)")]
    Scheme,
    #[error("the path contains a character that is not allowed (`@` in its first segment, `\\`, `%`-encoded `/`, `\\`, `%`, `?`, `#`, controls, non-ASCII not percent-encoded as UTF-8, spaces and format characters beyond ASCII, characters servers read as ASCII punctuation such as full-width dots and slashes, or a malformed escape)")]
    Character,
    #[error("the path leaves the provider's API base")]
    OutsideBase,
}

/// Bytes allowed as they are in a path segment (RFC 3986 `pchar` without `%`, which is
/// checked separately).
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

/// The look-alikes of `/` and `\` that transliteration (iconv's, ICU's Latin-ASCII) turns
/// into them, which their compatibility form does not: refused in a path.
const SLASHES: &[char] = &[
    '\u{00F7}', '\u{2044}', '\u{2215}', '\u{2571}', '\u{2572}', '\u{27CB}', '\u{27CD}', '\u{29F5}',
    '\u{29F8}', '\u{29F9}', '\u{2216}',
];

/// The ASCII punctuation a character beyond ASCII may fold into (`（` into `(`): what a
/// path segment takes as it is (`plain`), but for `.` (dot segments), `:` (a scheme in the
/// first segment) and `@` (a user name there).
const FOLDS_TO: &[u8] = b"-_~!$&'()*+,;=";

/// A character beyond ASCII (percent-encoded as UTF-8: `Beyonc%C3%A9`) is taken when it
/// is a letter, a mark, a number, punctuation or a symbol whose compatibility form holds no
/// ASCII but letters, digits and the punctuation a path takes as it is (`FOLDS_TO`): `é`,
/// `ú` or `u` with its accent, `’`, `★`, `Ａ`, the full-width parentheses of CJK file names,
/// the joiners emoji and Persian and Indic words are written with (U+200C, U+200D). Some
/// servers fold characters into that form (NFKC) before they route, and `．` and `／`
/// (full-width dot and slash) are `.` and `/` there. Spaces, controls, other format
/// characters (direction overrides, the zero-width space) and `SLASHES` are refused.
fn allowed_beyond_ascii(c: char) -> bool {
    use icu_properties::props::{GeneralCategory, GeneralCategoryGroup as Group};
    if SLASHES.contains(&c) {
        return false;
    }
    if matches!(c, '\u{200C}' | '\u{200D}') {
        return true;
    }
    let kind = icu_properties::CodePointMapData::<GeneralCategory>::new().get(c);
    let wanted = [
        Group::Letter,
        Group::Mark,
        Group::Number,
        Group::Punctuation,
        Group::Symbol,
    ];
    if !wanted.iter().any(|group| group.contains(kind)) {
        return false;
    }
    let mut utf8 = [0u8; 4];
    icu_normalizer::ComposingNormalizerBorrowed::new_nfkc()
        .normalize(c.encode_utf8(&mut utf8))
        .bytes()
        .all(|b| !b.is_ascii() || b.is_ascii_alphanumeric() || FOLDS_TO.contains(&b))
}

/// Whether `c` is punctuation (any script's full stop among it).
fn punctuation(c: char) -> bool {
    use icu_properties::props::{GeneralCategory, GeneralCategoryGroup};
    GeneralCategoryGroup::Punctuation
        .contains(icu_properties::CodePointMapData::<GeneralCategory>::new().get(c))
}

/// A character beyond ASCII that software may drop before it routes: one that renders as
/// nothing (Default_Ignorable_Code_Point: joiners, variation selectors, the combining
/// grapheme joiner, Hangul fillers) or an accent (a mark), which accent stripping removes.
fn dropped(c: char) -> bool {
    use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory, GeneralCategoryGroup};
    !c.is_ascii()
        && (icu_properties::CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
            || GeneralCategoryGroup::Mark
                .contains(icu_properties::CodePointMapData::<GeneralCategory>::new().get(c)))
}

/// One segment as it arrived: percent escapes are well formed, and what they decode to is
/// neither a separator, a backslash, a percent sign (no double encoding), a control, nor
/// (`first`) `@`; beyond ASCII, UTF-8 of the characters `allowed_beyond_ascii` takes.
fn check_segment(raw: &str, first: bool) -> Result<String, PathError> {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next(), bytes.next()];
            let value = match hex {
                [Some(h), Some(l)] => std::str::from_utf8(&[h, l])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok()),
                _ => None,
            };
            decoded.push(value.ok_or(PathError::Character)?);
        } else if plain(b) {
            decoded.push(b);
        } else {
            return Err(PathError::Character);
        }
    }
    // `@` in the first segment stays refused: it follows the base's path, but a server
    // that joins strings may read what is before it as a user name.
    if decoded.iter().any(|&b| {
        matches!(b, b'/' | b'\\' | b'%' | b'?' | b'#')
            || b < 0x20
            || b == 0x7f
            || (first && b == b'@')
    }) {
        return Err(PathError::Character);
    }
    let text = String::from_utf8(decoded).map_err(|_| PathError::Character)?;
    if !text
        .chars()
        .all(|c| c.is_ascii() || allowed_beyond_ascii(c))
    {
        return Err(PathError::Character);
    }
    // `..;x` is `..` to servers that strip path parameters (Tomcat, Spring), and `... ` or
    // `.. ` is `..` to those that drop a name's trailing dots and spaces (Windows'). Read
    // as software that drops invisible characters and accents and transliterates reads
    // it: `..%CD%8F`, `..%CC%81`, and full stops of other scripts (`。。`, `··`, `።።`) are
    // `..` there. A segment of only those, dots and spaces is refused; `モーニング娘。`
    // is a name.
    let before_params = text.split(';').next().unwrap_or_default();
    let only_dots = before_params
        .chars()
        .filter(|&c| !dropped(c))
        .all(|c| matches!(c, '.' | ' ') || (!c.is_ascii() && punctuation(c)));
    if only_dots {
        return Err(PathError::DotSegment);
    }
    Ok(text)
}

/// Each segment of `rest` checked; the first refused, counted from 1, and why.
fn check_segments(rest: &str) -> Result<(), (usize, PathError)> {
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, raw) in segments.iter().enumerate() {
        // A trailing slash is a path of its own at most APIs: allowed; `//` is not.
        if raw.is_empty() {
            if i == last {
                continue;
            }
            return Err((i + 1, PathError::EmptySegment));
        }
        let decoded = check_segment(raw, i == 0).map_err(|e| (i + 1, e))?;
        if i == 0 && decoded.contains(':') {
            return Err((1, PathError::Scheme));
        }
    }
    Ok(())
}

/// Which segment of `rest` (counted from 1) `upstream_url` refuses, if one: said with the
/// refusal, as the path itself is not repeated.
pub fn refused_segment(rest: &str) -> Option<usize> {
    check_segments(rest).err().map(|(n, _)| n)
}

/// `base` + `rest` (the caller's path after `/v1/proxy/{provider}/{account}/`, as it
/// arrived) + `query`. `base` ends in `/` (the config loader makes sure).
pub fn upstream_url(base: &Url, rest: &str, query: Option<&str>) -> Result<Url, PathError> {
    check_segments(rest).map_err(|(_, e)| e)?;
    let mut url = base.clone();
    url.set_path(&format!("{}{rest}", base.path()));
    url.set_query(query.filter(|q| !q.is_empty()));
    url.set_fragment(None);
    let same_origin = url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none();
    if !same_origin || !url.path().starts_with(base.path()) {
        return Err(PathError::OutsideBase);
    }
    Ok(url)
}

/// What a provider's redirect is read against.
pub struct RedirectBase<'a> {
    /// The API's base (`api_base_url`).
    pub base: &'a Url,
    /// The proxy's path for `base`: `{base_path}/v1/proxy/{provider}/{account}/`.
    pub proxy_prefix: &'a str,
    /// Where callers reach oauthd (`public_url`): never a redirect's destination.
    pub oauthd: &'a Url,
    /// Where this caller reached oauthd (its `Host`, and the names a proxy in front says
    /// it was called by), which need not be `public_url` (an app on the machine calling
    /// 127.0.0.1): never a redirect's destination either, on any port, nor their
    /// subdomains, as some clients keep their `Authorization` header for a redirect to the
    /// same host name on another port or scheme, or to a subdomain of it (Go's).
    pub called: &'a [CalledAs],
}

/// A host a caller reached oauthd at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalledAs {
    host: String,
}

impl CalledAs {
    /// From a `Host` value (`host`, `host:port`, `[v6]:port`); `None` for what is not one.
    pub fn parse(authority: &str) -> Option<CalledAs> {
        let url = Url::parse(&format!("http://{}/", authority.trim())).ok()?;
        let host = host_of(&url)?;
        Some(CalledAs { host })
    }

    /// Whether `target` names this host or a subdomain of it, on any port and scheme.
    fn named_by(&self, target: &Url) -> bool {
        host_of(target).is_some_and(|h| within(&h, &self.host))
    }
}

/// Where a redirect of the API sends the caller: `location` (the provider's `Location`)
/// taken from `upstream`, the address that answered. An address inside the API's base
/// that the proxy takes becomes the proxy's own path for it, so that following the
/// redirect goes through oauthd, with the account's token, again. Any other http(s)
/// address is made absolute: a relative one names the provider's host. `None` (no
/// `Location` handed back) for what is not an http(s) address, and for an address of
/// oauthd's own, whose API the caller's client would call with its oauthd key (a `307` to
/// `/v1/connections/...` keeps a `DELETE` a `DELETE`).
pub fn redirect_location(upstream: &Url, location: &str, to: &RedirectBase<'_>) -> Option<String> {
    let target = upstream.join(location).ok()?;
    if !matches!(target.scheme(), "http" | "https") {
        return None;
    }
    let inside = target.origin() == to.base.origin()
        && target.username().is_empty()
        && target.password().is_none();
    let rest = target
        .path()
        .strip_prefix(to.base.path())
        .filter(|rest| inside && upstream_url(to.base, rest, target.query()).is_ok());
    if let Some(rest) = rest {
        let mut own = format!("{}{rest}", to.proxy_prefix);
        if let Some(query) = target.query() {
            own.push('?');
            own.push_str(query);
        }
        if let Some(fragment) = target.fragment() {
            own.push('#');
            own.push_str(fragment);
        }
        return Some(own);
    }
    let own = names(&target, to.oauthd) || to.called.iter().any(|c| c.named_by(&target));
    (!own).then(|| target.into())
}

/// A `Link` header's value (RFC 8288: `<target>; params, <target>; params`) with each
/// target read as `redirect_location` reads a `Location`, so that a pagination helper
/// following `rel="next"` stays on the proxy; a link whose target is left out is left out,
/// and so is one whose parameters hold a `<`: clients that split the value at `, <`
/// without minding quotes (Python's `requests`) read a link hidden in a quoted parameter,
/// which nothing here would have read as a target (a `>` alone starts none: `title="Next
/// >"` stays).
/// `None` when nothing is left, or the value is not of that shape.
pub fn link_targets(upstream: &Url, value: &str, to: &RedirectBase<'_>) -> Option<String> {
    let mut links = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            break;
        }
        let (target, after) = rest.strip_prefix('<')?.split_once('>')?;
        let (params, next) = after.split_at(link_end(after));
        let hides_a_link = params.contains('<');
        if let Some(target) = redirect_location(upstream, target, to).filter(|_| !hides_a_link) {
            links.push(format!("<{target}>{params}"));
        }
        rest = next;
    }
    (!links.is_empty()).then(|| links.join(", "))
}

/// Where a link's parameters end: at the first `,` outside a quoted string.
fn link_end(params: &str) -> usize {
    let mut quoted = false;
    for (i, c) in params.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => return i,
            _ => {}
        }
    }
    params.len()
}

/// Whether `target` names the host of `own` (`public_url`) or a subdomain of it, on any
/// port and scheme (for a host on this machine, any name of this machine: loopback and
/// unspecified addresses, `localhost` and `*.localhost`, which browsers and resolvers
/// send to loopback).
fn names(target: &Url, own: &Url) -> bool {
    use crate::local_url::is_this_machine as local;
    let named = host_of(target)
        .zip(host_of(own))
        .is_some_and(|(t, o)| within(&t, &o));
    named || (local(target) && local(own))
}

/// A URL's host, lower case, without a final dot.
fn host_of(url: &Url) -> Option<String> {
    url.host_str()
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
}

/// Whether `host` is `parent` or a subdomain of it (both lower case, no final dot).
fn within(host: &str, parent: &str) -> bool {
    host == parent
        || host
            .strip_suffix(parent)
            .is_some_and(|sub| sub.ends_with('.') && !parent.starts_with('['))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://api.example.com/v1/").unwrap()
    }

    #[test]
    fn the_path_and_query_go_below_the_base() {
        let u = upstream_url(&base(), "me/player", Some("market=DE&x=%20y")).unwrap();
        assert_eq!(
            u.as_str(),
            "https://api.example.com/v1/me/player?market=DE&x=%20y"
        );
        assert_eq!(
            upstream_url(&base(), "", None).unwrap().as_str(),
            "https://api.example.com/v1/"
        );
        assert_eq!(
            upstream_url(&base(), "items/", None).unwrap().as_str(),
            "https://api.example.com/v1/items/"
        );
        // Encoded characters that are not separators stay as sent.
        assert_eq!(
            upstream_url(&base(), "search/a%20b", None).unwrap().path(),
            "/v1/search/a%20b"
        );
        // Names beyond ASCII, as UTF-8 (composed or with a combining accent), and `@`
        // past the first segment.
        for rest in [
            "search/Beyonc%C3%A9",
            "me/drive/root:/Mu%CC%81sica:/children",
            "users/alice@contoso.com",
            "users/alice%40contoso.com",
            "artists/Guns%20N%E2%80%99%20Roses",
            "tags/%E2%98%85/%E6%97%A5%E6%9C%AC",
            // ❤️ (with its variation selector), a family emoji joined by ZWJ, a Persian
            // word with ZWNJ, Sinhala with ZWJ, a Japanese name ending in 。
            "tags/%E2%9D%A4%EF%B8%8F",
            "tags/%F0%9F%91%A8%E2%80%8D%F0%9F%91%A9%E2%80%8D%F0%9F%91%A7",
            "search/%D9%85%DB%8C%E2%80%8C%D8%AE%D9%88%D8%A7%D9%87%D9%85",
            "search/%E0%B7%81%E0%B7%8A%E2%80%8D%E0%B6%BB%E0%B7%93",
            "artists/%E3%83%A2%E3%83%BC%E3%83%8B%E3%83%B3%E3%82%B0%E5%A8%98%E3%80%82",
            // A CJK file name with full-width parentheses: （1）.
            "files/%E5%86%99%E7%9C%9F%EF%BC%88%EF%BC%91%EF%BC%89.jpg",
        ] {
            let u = upstream_url(&base(), rest, None).unwrap();
            assert_eq!(u.path(), format!("/v1/{rest}"), "{rest}");
        }
        let ip = Url::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            upstream_url(&ip, "users/me:batch", None).unwrap().as_str(),
            "http://127.0.0.1:8080/users/me:batch"
        );
    }

    #[test]
    fn nothing_escapes_the_base() {
        use PathError::*;
        for (rest, why) in [
            ("..", DotSegment),
            ("../admin", DotSegment),
            ("me/../../admin", DotSegment),
            ("./me", DotSegment),
            ("%2e%2e/admin", DotSegment),
            ("%2E%2E/admin", DotSegment),
            (".%2e/admin", DotSegment),
            ("%2e/admin", DotSegment),
            ("me/%2e%2e", DotSegment),
            ("/evil.example/x", EmptySegment),
            ("//evil.example/x", EmptySegment),
            ("me//x", EmptySegment),
            ("https:/evil.example/x", Scheme),
            ("https:%2f%2fevil.example", Character),
            ("http:evil.example", Scheme),
            ("javascript:alert(1)", Scheme),
            ("user@evil.example/x", Character),
            ("me%40evil.example", Character),
            ("me%E2%80%AEtxt.exe", Character),
            ("me%E2%80%8Bx", Character),
            ("me%C2%A0x", Character),
            ("me%E2%80%A4%E2%80%A4", Character),
            ("%EF%B9%92%EF%B9%92/admin", Character),
            ("me/%EF%BC%85%32%65", Character),
            ("me/%ED%A0%80", Character),
            ("me/%F4%8F%BF%BF", Character),
            ("x/..%CD%8F/admin", DotSegment),
            ("x/..%EF%B8%8F/admin", DotSegment),
            ("x/..%F3%A0%84%80", DotSegment),
            ("x/..%E1%A0%8B", DotSegment),
            ("x/..%E3%85%A4", DotSegment),
            ("x/..%E2%80%8D", DotSegment),
            ("x/..%CC%81/admin", DotSegment),
            ("x/%CC%81", DotSegment),
            ("x/%E3%80%82%E3%80%82/admin", DotSegment),
            ("x/%C2%B7%C2%B7", DotSegment),
            ("x/%EF%BD%A1%EF%BD%A1", DotSegment),
            ("x/%CE%87%CE%87", DotSegment),
            ("x/%E1%8D%A2%E1%8D%A2/admin", DotSegment),
            ("x/%DB%94%E0%A5%A4", DotSegment),
            ("x/..%E2%88%95..%E2%88%95admin", Character),
            ("x/a%E2%81%84b", Character),
            ("x/a%E2%88%96b", Character),
            ("x/a%E2%95%B2b", Character),
            ("x/a%C3%B7b", Character),
            ("x/a%E2%80%8Bb", Character),
            ("%EF%BC%9Aevil", Character),
            ("x/%EF%BC%A0a", Character),
            ("x/a%E2%80%A6", Character),
            ("..%2fadmin", Character),
            ("me%2f..%2fadmin", Character),
            ("me%5c..%5cadmin", Character),
            ("me\\..\\admin", Character),
            ("%252e%252e/admin", Character),
            ("..;/admin", DotSegment),
            (".../admin", DotSegment),
            ("%2e%2e%20/admin", DotSegment),
            ("..%20%20/admin", DotSegment),
            (".%20./admin", DotSegment),
            ("me/%20/x", DotSegment),
            ("..;jsessionid=x/admin", DotSegment),
            (".;/admin", DotSegment),
            ("%2e%2e;/admin", DotSegment),
            ("%EF%BC%8E%EF%BC%8E/admin", Character),
            ("me%EF%BC%8Fadmin", Character),
            ("me%00", Character),
            ("me%0d%0aHost:%20evil", Character),
            ("me%", Character),
            ("me%zz", Character),
            ("me%c0%ae%c0%ae", Character),
            ("me?x=1", Character),
            ("me#frag", Character),
            ("caf\u{e9}", Character),
            ("a b", Character),
        ] {
            let outside = why == OutsideBase;
            assert_eq!(upstream_url(&base(), rest, None), Err(why), "{rest}");
            if !outside {
                assert!(refused_segment(rest).is_some(), "{rest}");
            }
        }
    }

    /// The API at `https://api.example/v2/`, which answered from `items/7?x=1`, and
    /// oauthd at `https://auth.home.example/`.
    fn api() -> [Url; 3] {
        [
            "https://api.example/v2/",
            "https://api.example/v2/items/7?x=1",
            "https://auth.home.example/",
        ]
        .map(|u| Url::parse(u).unwrap())
    }

    #[test]
    fn redirects_inside_the_api_come_back_through_the_proxy_and_others_name_their_host() {
        let [base, upstream, oauthd] = api();
        let to = RedirectBase {
            base: &base,
            proxy_prefix: "/oauthd/v1/proxy/p/a/",
            oauthd: &oauthd,
            called: &[],
        };
        let at = |location: &str| redirect_location(&upstream, location, &to);
        assert_eq!(
            at("/v2/items/8").as_deref(),
            Some("/oauthd/v1/proxy/p/a/items/8")
        );
        assert_eq!(
            at("https://api.example/v2/items/8?page=2#top").as_deref(),
            Some("/oauthd/v1/proxy/p/a/items/8?page=2#top")
        );
        assert_eq!(at("9").as_deref(), Some("/oauthd/v1/proxy/p/a/items/9"));
        // Outside the base, or another origin: absolute, on the host it names.
        assert_eq!(
            at("/v1/connections/p/a").as_deref(),
            Some("https://api.example/v1/connections/p/a")
        );
        for absolute in [
            "https://cdn.example/file",
            "http://api.example/v2/items/8",
            "https://user:pw@api.example/v2/x",
            "https://api.example/v2",
            "https://api.example/v2x/items",
        ] {
            assert_eq!(at(absolute).as_deref(), Some(absolute), "{absolute}");
        }
        // Inside the base, but a path the proxy refuses: absolute rather than a dead end.
        assert_eq!(
            at("/v2/a//b").as_deref(),
            Some("https://api.example/v2/a//b")
        );
        // Not an http(s) address, or one of oauthd's own: no Location at all.
        for dropped in [
            "javascript:alert(1)",
            "data:text/html,x",
            "ftp://api.example/v2/x",
            "https://auth.home.example/v1/connections/p/a",
            "https://AUTH.home.example:443/v1/connections/p/a",
            // Another port or scheme of oauthd's host, or a subdomain of it: Go's client
            // sends its Authorization header (the oauthd key) there.
            "http://auth.home.example/x",
            "https://auth.home.example:8443/x",
            "https://evil.auth.home.example/x",
        ] {
            assert_eq!(at(dropped), None, "{dropped}");
        }
        for kept in ["https://home.example/x", "https://xauth.home.example/x"] {
            assert_eq!(at(kept).as_deref(), Some(kept), "{kept}");
        }
        // Each of `dropped` comes back without a Location, `kept` with one.
        let only = |to: &RedirectBase<'_>, dropped: &[&str], kept: &str| {
            for location in dropped {
                assert_eq!(
                    redirect_location(&upstream, location, to),
                    None,
                    "{location}"
                );
            }
            assert!(redirect_location(&upstream, kept, to).is_some(), "{kept}");
        };
        // On a loopback public_url, any loopback name with its port is oauthd.
        let local = Url::parse("http://127.0.0.1:6288/").unwrap();
        let to = RedirectBase {
            oauthd: &local,
            ..to
        };
        only(
            &to,
            &[
                "http://localhost:6288/v1/connections/p/a",
                "http://127.0.0.1:6288/v1/states/consume",
                "http://[::1]:6288/x",
                "http://x.localhost:6288/v1/connections/p/a",
                "http://API.LOCALHOST.:6288/x",
                "http://0.0.0.0:6288/x",
                "http://[::]:6288/x",
                "http://[::ffff:127.0.0.1]:6288/x",
                "http://[::127.0.0.1]:6288/x",
                "http://[64:ff9b::7f00:1]:6288/x",
                "http://localhost:3000/x",
            ],
            "https://cdn.example/x",
        );
        // The address this caller used is oauthd's too, whatever public_url says: an app
        // on the machine calls 127.0.0.1 while public_url names the machine for browsers.
        // By that name only: a client keeps its key for the same host name, not another
        // name of the machine.
        let called = [CalledAs::parse("127.0.0.1:6288").unwrap()];
        let to = RedirectBase {
            oauthd: &oauthd,
            called: &called,
            ..to
        };
        only(
            &to,
            &[
                "http://127.0.0.1:6288/v1/connections/p/a",
                "https://127.0.0.1:6288/x",
                "http://127.0.0.1:8080/x",
                "https://auth.home.example/v1/states",
            ],
            "http://localhost:6288/x",
        );
        // A Host without a port, or with a trailing dot; its subdomains.
        let called = [CalledAs::parse("OAuthd.lan.").unwrap()];
        let to = RedirectBase {
            called: &called,
            ..to
        };
        only(
            &to,
            &[
                "https://oauthd.lan/v1/states",
                "http://oauthd.lan:443/x",
                "http://oauthd.lan:8080/x",
                "https://api.oauthd.lan/x",
            ],
            "http://oauthd.lan.example/x",
        );
        // A port written out or not; an IPv6 address with or without one.
        let called = [
            CalledAs::parse("localhost:80").unwrap(),
            CalledAs::parse("[::1]:6288").unwrap(),
            CalledAs::parse("[::1]").unwrap(),
        ];
        let to = RedirectBase {
            called: &called,
            ..to
        };
        only(
            &to,
            &[
                "http://localhost/v1/states",
                "http://[::1]:6288/x",
                "http://[::1]/x",
                "https://localhost/x",
            ],
            "http://127.0.0.1:47001/x",
        );
        assert_eq!(CalledAs::parse("a b"), None);
    }

    #[test]
    fn each_links_target_is_read_as_a_location_is() {
        let [base, upstream, oauthd] = api();
        let to = RedirectBase {
            base: &base,
            proxy_prefix: "/v1/proxy/p/a/",
            oauthd: &oauthd,
            called: &[],
        };
        let links = |value: &str| link_targets(&upstream, value, &to);
        assert_eq!(
            links(r#"<https://api.example/v2/items?page=2>; rel="next", </v2/items?page=9>; rel="last""#)
                .as_deref(),
            Some(r#"</v1/proxy/p/a/items?page=2>; rel="next", </v1/proxy/p/a/items?page=9>; rel="last""#)
        );
        assert_eq!(
            links(r#"<https://docs.example/x>; rel="help"; title="a, b""#).as_deref(),
            Some(r#"<https://docs.example/x>; rel="help"; title="a, b""#),
            "a comma inside quotes stays in its link"
        );
        assert_eq!(
            links(r#"<https://auth.home.example/v1/states>; rel="next", <javascript:x>; rel="prev", </other>; rel="up""#)
                .as_deref(),
            Some(r#"<https://api.example/other>; rel="up""#)
        );
        assert_eq!(
            links(r#"<https://cdn.example/x>; title="a, <https://auth.home.example/v1/connections/p/a/token>; rel=next", </v2/y>; rel="up""#)
                .as_deref(),
            Some(r#"</v1/proxy/p/a/y>; rel="up""#),
            "a link hidden in a quoted parameter goes with the link that holds it"
        );
        assert_eq!(
            links(r#"<https://api.example/v2/items?page=2>; rel="next"; title="Next >""#)
                .as_deref(),
            Some(r#"</v1/proxy/p/a/items?page=2>; rel="next"; title="Next >""#)
        );
        assert_eq!(links("<https://auth.home.example/x>"), None);
        assert_eq!(links("not a link"), None);
        assert_eq!(links("<unclosed; rel=next"), None);
    }
}
