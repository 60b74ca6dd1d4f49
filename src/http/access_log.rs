//! The access log: one line per answer, `CLIENT "METHOD PATH" STATUS BYTES MILLISms`,
//! written under the log target `oauthd::access` when the answer's last byte is out (or
//! the client left). Paths only, never query strings: callbacks carry codes and states
//! there.
//!
//! Which answers are logged at `info` is the `access_log` setting: `"errors"` (the
//! default) logs 4xx and 5xx answers at `info` and the rest at `debug`, so that apps that
//! ask for a token before every call they make do not write a line each (measured: a quarter
//! to a third of the token API's CPU, and a journal that drops lines past its rate limit);
//! `"all"` logs every answer at `info`; `"off"` logs none. A line is put together only when
//! its level is logged.
//!
//! Each second writes at most `access_log_per_second` lines (default 50; 0 for no limit) of
//! each class of answer: 1xx to 3xx, 4xx, 5xx, so that a flood of refused requests does not
//! crowd out the server errors. Past it, lines are counted by status instead, and one summary
//! line says how many were left out: a client hammering oauthd with a wrong key cannot push
//! the journal past its rate limit, which would drop oauthd's own warnings with the access
//! lines. For the same reason a line's size is bounded: a method oauthd does not know is
//! written `OTHER`, a path past `MAX_PATH` bytes is cut, and `"` and `\` in a path are
//! written `%22` and `%5C`, so that the quoted request cannot be closed early.

use super::ratelimit::client_ip;
use super::request_metrics::method_label;
use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The log target of access lines (`RUST_LOG=oauthd::access=warn` silences them too).
pub const TARGET: &str = "oauthd::access";

/// The log target of actix-http's line for a connection it ended before a request reached
/// oauthd (`stream error: …`): one it could not parse (answered `400`), one that broke or
/// was too slow.
const HTTP_LAYER: &str = "actix_http::h1::dispatcher";

/// The class, in the budget, of the HTTP layer's lines (no status: no request was read).
/// A class of its own: such lines cost a sender nothing (no request, no rate limit), and
/// must not crowd out the lines of refused requests (401s of a key being guessed).
const UNPARSED: u16 = 0;

/// The serving access log's policy and budget, for the HTTP layer's lines (set when the
/// server starts: `AccessLog::take_http_layer_lines`).
static SERVING: RwLock<Option<(AccessLogPolicy, Arc<Budget>)>> = RwLock::new(None);

/// Whether `record` is the HTTP layer's line for a connection that ended before a request
/// reached oauthd, and was taken into the access log: written there at a `4xx` answer's
/// level, within a budget a second of its own (`UNPARSED`), never at
/// `ERROR` as actix-http writes it. One line at `ERROR` for each malformed request let
/// anyone who reaches the port write the journal past its rate limit, which drops oauthd's
/// own warnings with them.
pub fn from_http_layer(record: &log::Record<'_>) -> bool {
    if record.target() != HTTP_LAYER {
        return false;
    }
    let serving = match SERVING.read() {
        Ok(s) => s.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let Some((policy, budget)) = serving else {
        return false;
    };
    let message = record.args().to_string();
    let Some(error) = message.strip_prefix("stream error: ") else {
        return false;
    };
    if let Some(level) = policy.level(StatusCode::BAD_REQUEST) {
        if log::log_enabled!(target: TARGET, level) && budget.admit(UNPARSED) {
            log::log!(
                target: TARGET,
                level,
                "- \"-\" - connection ended before a request reached oauthd: {error}"
            );
        }
    }
    true
}

/// Longest path written whole; a longer one is cut and says how much was left off.
const MAX_PATH: usize = 512;

/// `access_log` in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogPolicy {
    /// Every answer at `info`.
    All,
    /// 4xx and 5xx answers at `info`, the others at `debug` (default).
    #[default]
    Errors,
    /// No access lines at all.
    Off,
}

impl AccessLogPolicy {
    /// The level an answer with `status` is logged at, if any.
    fn level(self, status: StatusCode) -> Option<log::Level> {
        let failed = status.is_client_error() || status.is_server_error();
        match self {
            AccessLogPolicy::Off => None,
            AccessLogPolicy::All => Some(log::Level::Info),
            AccessLogPolicy::Errors if failed => Some(log::Level::Info),
            AccessLogPolicy::Errors => Some(log::Level::Debug),
        }
    }
}

/// What the access log needs of the server's settings (app data).
#[derive(Debug, Clone)]
pub struct AccessLog {
    pub policy: AccessLogPolicy,
    /// Proxies whose `X-Forwarded-For` names the client (as for the rate limits).
    pub trusted_proxies: Vec<crate::ip_range::IpRange>,
    /// Lines left a second, shared by every worker.
    pub budget: Arc<Budget>,
}

impl AccessLog {
    /// Takes the HTTP layer's lines for connections that ended before a request reached
    /// oauthd into this access log from now on (`from_http_layer`).
    pub fn take_http_layer_lines(&self) {
        let serving = Some((self.policy, self.budget.clone()));
        match SERVING.write() {
            Ok(mut s) => *s = serving,
            Err(poisoned) => *poisoned.into_inner() = serving,
        }
    }

    /// The line for an answer to `req` with `status`, when its level is logged.
    pub fn line(&self, req: &HttpRequest, status: StatusCode) -> Option<Line> {
        let level = self.policy.level(status)?;
        if !log::log_enabled!(target: TARGET, level) || !self.budget.admit(status.as_u16()) {
            return None;
        }
        Some(Line {
            level,
            client: client_ip(req, &self.trusted_proxies),
            request: format!("{} {}", method_label(req.method()), logged_path(req.path())),
            status: status.as_u16(),
            bytes: 0,
        })
    }
}

/// `path` as an access line writes it: segments shaped as oauthd's secrets written
/// `[secret]`, `"` and `\` escaped, at most `MAX_PATH` bytes.
fn logged_path(path: &str) -> Cow<'_, str> {
    match without_secrets(path) {
        Cow::Borrowed(path) => bounded(path),
        Cow::Owned(path) => Cow::Owned(bounded(&path).into_owned()),
    }
}

/// Whether a path segment holds something of the shape of a secret oauthd issues, or of
/// most of one: a state value (43 characters of base64url) or an API key (`oauthd_` and
/// one, in either case), as sent or percent-decoded, with other characters around it (a
/// line feed, a dot) or glued to it (a letter typed after it, two keys run together), or
/// cut short (a key with its last character lost), or parted by other characters into
/// runs each too short to tell (`AaJMb3VHu1KXgZpqK7qd.LtH2MO659N9DySpnWBSnkIQ`): its
/// base64url characters are read together too. Read together, a long run of mixed case
/// counts only with capitals inside words as a random value has them (`MID_CAPITALS`):
/// names and files (`Firstname.Lastname@Contoso.com`) have few.
fn secret_shaped(segment: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    let base64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let found = [segment, decoded.as_ref()].into_iter().any(|text| {
        text.split(|c: char| !base64url(c)).any(secret_word)
            || (!text.chars().all(base64url) && {
                let together: String = text.chars().filter(|&c| base64url(c)).collect();
                // A state value read together is in mixed case, as a random one is: a
                // file's name in small letters whose letters come to 43 is not one.
                key_inside(&together)
                    || (crate::secret::is_token_shaped(&together) && mixed_case(&together))
                    || (mid_capitals(text) >= MID_CAPITALS && random_run(&together))
            })
    });
    found
}

/// How many capitals inside words (after a letter) make a long mixed-case text parted by
/// other characters read as random: a 43-character state value has about 14, names and
/// files' names a few (`Adele.McDonald.DeShawn@ContosoPharma.OnMicrosoft.com`: 4).
const MID_CAPITALS: usize = 6;

/// The capitals of `text` that follow a letter.
fn mid_capitals(text: &str) -> usize {
    let bytes = text.as_bytes();
    bytes
        .iter()
        .zip(bytes.iter().skip(1))
        .filter(|(before, b)| before.is_ascii_alphabetic() && b.is_ascii_uppercase())
        .count()
}

/// How much of an API key after its prefix makes a word one, however it goes on.
const KEY_TAIL: usize = 12;
/// How long a run of base64url holding both capitals and small letters must be to be
/// taken for (most of) a random secret: names people give (accounts, namespaces) rarely
/// run so long in mixed case, and ids oauthd gives are UUIDs in small letters.
const RANDOM_RUN: usize = 24;

/// A word of base64url characters (`-`, `_`, letters and digits) shaped as a secret.
fn secret_word(word: &str) -> bool {
    issued_shape(word) || random_run(word)
}

/// A word shaped as what oauthd issues: a state value, or an API key inside it.
fn issued_shape(word: &str) -> bool {
    crate::secret::is_token_shaped(word) || key_inside(word)
}

/// Whether `word` holds an API key's prefix (in either case) and enough of a key after it.
fn key_inside(word: &str) -> bool {
    let prefix = crate::secret::API_KEY_PREFIX.as_bytes();
    let bytes = word.as_bytes();
    bytes
        .windows(prefix.len())
        .position(|w| w.eq_ignore_ascii_case(prefix))
        .is_some_and(|at| bytes.len() - at - prefix.len() >= KEY_TAIL)
}

/// Whether `word` holds both capitals and small letters.
fn mixed_case(word: &str) -> bool {
    let bytes = word.as_bytes();
    bytes.iter().any(u8::is_ascii_uppercase) && bytes.iter().any(u8::is_ascii_lowercase)
}

/// A long run in mixed case: most of a random secret.
fn random_run(word: &str) -> bool {
    word.len() >= RANDOM_RUN && mixed_case(word)
}

/// `path` with each segment shaped as a secret written `[secret]`: an app that put a
/// state's value where its id goes (`DELETE /v1/namespaces/session/states/<value>`) had
/// it logged with the `404`.
fn without_secrets(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(secret_shaped) {
        return Cow::Borrowed(path);
    }
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| if secret_shaped(s) { "[secret]" } else { s })
        .collect();
    Cow::Owned(segments.join("/"))
}

/// `path` with `"` and `\` escaped, at most `MAX_PATH` bytes.
fn bounded(path: &str) -> Cow<'_, str> {
    if path.len() <= MAX_PATH && !path.contains(['"', '\\']) {
        return Cow::Borrowed(path);
    }
    let mut end = path.len().min(MAX_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let mut logged = String::with_capacity(end + 24);
    for c in path.get(..end).unwrap_or_default().chars() {
        match c {
            '"' => logged.push_str("%22"),
            '\\' => logged.push_str("%5C"),
            c => logged.push(c),
        }
    }
    if end < path.len() {
        logged.push_str(&format!("...(+{} bytes)", path.len() - end));
    }
    Cow::Owned(logged)
}

/// One answer's line until its body is done with.
pub struct Line {
    level: log::Level,
    client: Option<IpAddr>,
    /// Method and path.
    request: String,
    status: u16,
    bytes: u64,
}

impl Line {
    /// Counts body bytes sent.
    pub fn sent(&mut self, n: usize) {
        self.bytes = self.bytes.saturating_add(n as u64);
    }

    /// Writes the line; `elapsed` is from the request's arrival at the middleware.
    pub fn write(&self, elapsed: Duration) {
        let client = self
            .client
            .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        log::log!(
            target: TARGET,
            self.level,
            "{client} \"{}\" {} {} {:.3}ms",
            self.request,
            self.status,
            self.bytes,
            elapsed.as_secs_f64() * 1000.0
        );
    }
}

/// How many access lines of each class are written a second; the rest are counted and
/// summed up.
#[derive(Debug)]
pub struct Budget {
    /// Per class; 0: no limit.
    per_second: u32,
    started: Instant,
    window: Mutex<Window>,
}

/// Lines written in one second, by class of answer: each class has a budget of its own.
#[derive(Debug, Default)]
struct Written {
    /// 1xx to 3xx.
    others: u32,
    client_errors: u32,
    server_errors: u32,
    /// Connections that ended before a request reached oauthd (`UNPARSED`).
    unparsed: u32,
}

impl Written {
    fn of(&mut self, status: u16) -> &mut u32 {
        if status == UNPARSED {
            return &mut self.unparsed;
        }
        match status / 100 {
            5.. => &mut self.server_errors,
            4 => &mut self.client_errors,
            _ => &mut self.others,
        }
    }
}

/// The current second's counts, and what it left out.
#[derive(Debug, Default)]
struct Window {
    /// Seconds since `started`.
    second: u64,
    written: Written,
    /// Lines left out, by status, in the order first left out (at most the few hundred
    /// statuses HTTP has).
    left_out: Vec<(u16, u64)>,
}

/// What one second left out, for its summary line.
#[derive(Debug, PartialEq, Eq)]
struct LeftOut(Vec<(u16, u64)>);

impl Budget {
    pub fn new(per_second: u32) -> Self {
        Budget {
            per_second,
            started: Instant::now(),
            window: Mutex::new(Window::default()),
        }
    }

    /// True when the limit is on (a ticker should call `flush`).
    pub fn limited(&self) -> bool {
        self.per_second > 0
    }

    /// Whether a line for an answer with `status` may be written now.
    fn admit(&self, status: u16) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let (admitted, ended) = self.admit_at(self.now(), status);
        if let Some(left_out) = ended {
            left_out.write(self.per_second);
        }
        admitted
    }

    /// Writes the summary of a second that has ended with lines left out; called about
    /// once a second, so that the last one of a burst is not held back until the next line.
    pub fn flush(&self) {
        if let Some(left_out) = self.ended_before(self.now()) {
            left_out.write(self.per_second);
        }
    }

    /// Writes what the current second left out so far (when the server stops).
    pub fn flush_all(&self) {
        if let Some(left_out) = self.ended_before(self.now() + 1) {
            left_out.write(self.per_second);
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// `admit` at `second`; also hands back the summary of the second that ended, if any.
    fn admit_at(&self, second: u64, status: u16) -> (bool, Option<LeftOut>) {
        // A poisoned lock only means a thread panicked while counting: the counts are fine.
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let ended = window.start(second);
        let written = window.written.of(status);
        if *written < self.per_second {
            *written += 1;
            return (true, ended);
        }
        match window.left_out.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => window.left_out.push((status, 1)),
        }
        (false, ended)
    }

    /// The summary of the window if it is older than `second`.
    fn ended_before(&self, second: u64) -> Option<LeftOut> {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        window.start(second)
    }
}

impl Window {
    /// Moves on to `second` when it is a later one; what the old one left out, if anything.
    fn start(&mut self, second: u64) -> Option<LeftOut> {
        if second <= self.second {
            return None;
        }
        self.second = second;
        self.written = Written::default();
        let left_out = std::mem::take(&mut self.left_out);
        (!left_out.is_empty()).then_some(LeftOut(left_out))
    }
}

impl LeftOut {
    fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    fn write(&self, per_second: u32) {
        let by_status = self
            .0
            .iter()
            .map(|(status, n)| match *status {
                UNPARSED => format!("unparsed: {n}"),
                status => format!("{status}: {n}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let total = self.total();
        let lines = if total == 1 { "line" } else { "lines" };
        log::info!(
            target: TARGET,
            "{total} access {lines} left out in one second ({by_status}): at most {per_second} \
             of each class (1xx-3xx, 4xx, 5xx, unparsed) are written a second \
             (access_log_per_second)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_info_and_the_rest_debug_unless_all_or_off() {
        use log::Level::{Debug, Info};
        let cases = [
            (AccessLogPolicy::Errors, 200, Some(Debug)),
            (AccessLogPolicy::Errors, 302, Some(Debug)),
            (AccessLogPolicy::Errors, 401, Some(Info)),
            (AccessLogPolicy::Errors, 503, Some(Info)),
            (AccessLogPolicy::All, 200, Some(Info)),
            (AccessLogPolicy::All, 404, Some(Info)),
            (AccessLogPolicy::Off, 200, None),
            (AccessLogPolicy::Off, 500, None),
        ];
        for (policy, status, level) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(policy.level(status), level, "{policy:?} {status}");
        }
        assert_eq!(AccessLogPolicy::default(), AccessLogPolicy::Errors);
    }

    #[test]
    fn a_second_writes_its_budget_and_counts_the_rest_by_status() {
        let budget = Budget::new(2);
        assert_eq!(budget.admit_at(0, 401), (true, None));
        assert_eq!(budget.admit_at(0, 401), (true, None));
        assert_eq!(budget.admit_at(0, 401), (false, None));
        assert_eq!(budget.admit_at(0, 429), (false, None));
        assert_eq!(budget.admit_at(0, 401), (false, None));
        // Nothing to sum up while the second lasts.
        assert_eq!(budget.ended_before(0), None);
        // The next second starts afresh and hands back what the last one left out.
        let (admitted, ended) = budget.admit_at(1, 200);
        assert!(admitted);
        let ended = ended.expect("a summary");
        assert_eq!(ended, LeftOut(vec![(401, 2), (429, 1)]));
        assert_eq!(ended.total(), 3);
        // A second that left nothing out has nothing to say; a flush after a burst does.
        assert_eq!(budget.ended_before(2), None);
        for _ in 0..3 {
            budget.admit_at(5, 500);
        }
        assert_eq!(budget.ended_before(5), None);
        assert_eq!(budget.ended_before(6), Some(LeftOut(vec![(500, 1)])));
        // A clock read late on another thread does not go back to an older second.
        assert_eq!(budget.admit_at(4, 500), (true, None));
    }

    #[test]
    fn a_flood_of_one_class_leaves_the_others_their_lines() {
        let budget = Budget::new(2);
        for _ in 0..1000 {
            budget.admit_at(0, 401);
        }
        assert_eq!(budget.admit_at(0, 502), (true, None));
        assert_eq!(budget.admit_at(0, 503), (true, None));
        assert_eq!(budget.admit_at(0, 500), (false, None));
        assert_eq!(budget.admit_at(0, 200), (true, None));
        assert_eq!(budget.admit_at(0, 302), (true, None));
        assert_eq!(budget.admit_at(0, 204), (false, None));
        assert_eq!(
            budget.ended_before(1),
            Some(LeftOut(vec![(401, 998), (500, 1), (204, 1)]))
        );
        // What the current second left out so far, as the server stops.
        budget.admit_at(1, 404);
        budget.admit_at(1, 404);
        budget.admit_at(1, 404);
        assert_eq!(budget.ended_before(1), None);
        assert_eq!(budget.ended_before(2), Some(LeftOut(vec![(404, 1)])));
    }

    #[test]
    fn a_secret_in_a_path_is_not_logged() {
        let state = "AZr3b1Vx9q0mP2kL7wE4tY6uI8oA1sD3fG5hJ7kL9zX";
        assert_eq!(state.len(), 43);
        assert_eq!(
            logged_path(&format!("/v1/namespaces/session/states/{state}")),
            "/v1/namespaces/session/states/[secret]"
        );
        assert_eq!(
            logged_path(&format!("/v1/proxy/p/a/keys/oauthd_{state}/x\"")),
            "/v1/proxy/p/a/keys/[secret]/x%22"
        );
        // Percent-encoded, with a character after it, its key's prefix in capitals.
        let encoded: String = state.bytes().map(|b| format!("%{b:02X}")).collect();
        for sent in [
            encoded,
            format!("{state}%0A"),
            format!("{state}."),
            format!("OAUTHD_{state}"),
            // Glued to other characters, run together, cut short.
            format!("oauthd_{state}x"),
            format!("xoauthd_{state}"),
            format!("{state}{state}"),
            format!("oauthd_{}+", &state[..42]),
            state[..30].to_owned(),
            format!("x{state}"),
            // Parted into runs each too short to tell.
            format!("{}.{}", &state[..20], &state[20..]),
            format!("{}~{}+{}", &state[..14], &state[14..28], &state[28..]),
            format!("{}%2E{}", &state[..20], &state[20..]),
            // Parted after every character.
            state.chars().map(|c| format!("{c}.")).collect::<String>(),
            format!("oauthd_{state}")
                .chars()
                .map(|c| format!("{c}."))
                .collect::<String>(),
        ] {
            assert_eq!(
                logged_path(&format!("/v1/namespaces/session/states/{sent}")),
                "/v1/namespaces/session/states/[secret]",
                "{sent}"
            );
        }
        // Ids and names stay: UUIDs, names in one case, short ones in mixed case.
        for kept in [
            "/v1/namespaces/session/states/01a249c2-223b-8d49-8fc8-8faeea5f7ca5",
            "/v1/connections/spotify/living-room-speaker-in-the-basement/token",
            "/v1/connections/google/LivingRoomSpeaker/token",
            "/v1/namespaces/oauth:acme/states",
            "/v1/proxy/p/a/repos/oauthd_rs/issues",
            "/v1/proxy/graph/me/v1.0/users/alice.smith@example.com/drive",
            "/v1/proxy/p/a/Artists/The.Velvet.Underground/albums",
            "/v1/proxy/graph/me/users/Firstname.Lastname@Contoso.com/drive",
            "/v1/proxy/graph/me/users/AdeleV@contoso.OnMicrosoft.com",
            "/v1/proxy/p/a/files/Quarterly-Report.Final.pdf",
            "/v1/proxy/p/a/search/Beyonc%C3%A9.Knowles-Carter",
            "/v1/proxy/graph/me/users/Adele.McDonald.DeShawn@ContosoPharma.OnMicrosoft.com",
            "/v1/proxy/p/a/files/MyTeamMeetingNotes.OneNote.pdf",
            "/v1/proxy/p/a/files/meeting.notes.from.the.quarterly.review.2026.v2.txt",
        ] {
            assert_eq!(logged_path(kept), kept);
        }
    }

    #[test]
    fn a_logged_path_is_bounded_and_cannot_close_its_quotes() {
        assert!(matches!(
            logged_path("/v1/states"),
            Cow::Borrowed("/v1/states")
        ));
        assert_eq!(logged_path("/x\"_401_0\\"), "/x%22_401_0%5C");
        let long = format!("/{}", "a".repeat(2000));
        let logged = logged_path(&long);
        assert_eq!(
            logged,
            format!("/{}...(+1489 bytes)", "a".repeat(MAX_PATH - 1))
        );
        // Cut at a character's boundary, whatever the byte at the limit.
        let wide = format!("/{}", "é".repeat(600));
        assert!(
            logged_path(&wide).ends_with("...(+690 bytes)"),
            "{}",
            logged_path(&wide)
        );
    }

    #[test]
    fn no_limit_admits_every_line() {
        let budget = Budget::new(0);
        assert!(!budget.limited());
        assert!((0..10_000).all(|_| budget.admit(401)));
    }
}
