use super::file::{parse_text, without_values};
use super::*;
use std::path::Path;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    let file = parse_text(Path::new("test.toml"), text)?;
    Settings::resolve(file, &Overrides::default())
}

#[test]
fn a_rule_whose_sliding_states_could_never_be_made_is_refused() {
    let rule = "[states.namespaces.\"x\"]\nmax_lifetime_seconds = 100\ndefault_ttl_seconds = 300\n";
    let err = parse(rule).unwrap_err().to_string();
    assert!(
        err.contains("states.namespaces.\"x\".max_lifetime_seconds")
            && err.contains("at least default_ttl_seconds (300)"),
        "{err}"
    );
    // The same at the top, and fine once sliding states are not allowed.
    let top = "[states]\nmax_lifetime_seconds = 100\ndefault_ttl_seconds = 300\n";
    assert!(parse(top).is_err());
    assert!(parse(&format!("{top}sliding = false\n")).is_ok());
    assert!(parse(&format!("{rule}sliding = false\n")).is_ok());
    assert!(parse(
        "[states.namespaces.\"x\"]\nmax_lifetime_seconds = 300\ndefault_ttl_seconds = 300\n"
    )
    .is_ok());
    // A default TTL past the default lifetime (30 days), no lifetime written: the
    // lifetime follows the TTL.
    let long = "[states]\nmax_ttl_seconds = 5184000\n[states.namespaces.\"y\"]\ndefault_ttl_seconds = 5184000\n";
    assert!(parse(long).is_ok());
}

#[test]
fn common_slips_are_told_what_was_meant() {
    let err = parse("[notify]\nurl = \"http://127.0.0.1:9/\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("write [[notify]], with two brackets"), "{err}");
    for (url, meant) in [
        ("127.0.0.1:16288", "http://127.0.0.1:16288"),
        ("localhost:6288", "http://localhost:6288"),
    ] {
        let err = parse(&format!("public_url = \"{url}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("did you mean \"{meant}\" (or https://)?")),
            "{err}"
        );
    }
    let err = parse("public_url = \"ftp://x\"\n").unwrap_err().to_string();
    assert!(!err.contains("did you mean"), "{err}");
}

#[test]
fn open_metrics_are_warned_of_off_loopback_only() {
    let settings = parse("").unwrap();
    let warned = |addr: &str| settings.open_metrics_warning(addr.parse().unwrap());
    assert!(warned("0.0.0.0:6288").is_some_and(|w| w.contains("OAUTHD_METRICS_TOKEN")));
    assert!(warned("[::]:6288").is_some());
    assert!(warned("192.168.1.5:6288").is_some());
    assert!(warned("127.0.0.1:6288").is_none());
    assert!(warned("[::ffff:127.0.0.1]:6288").is_none());
    let mut guarded = parse("").unwrap();
    guarded.metrics_token = Some(crate::secret::SecretText::new("t".repeat(16)));
    assert!(guarded
        .open_metrics_warning("0.0.0.0:6288".parse().unwrap())
        .is_none());
}

#[test]
fn a_listen_address_with_a_port_past_65535_says_so() {
    let err = parse("listen = \"127.0.0.1:99999\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("the port is past 65535"), "{err}");
    let err = parse("listen = \"[::1]:70000\"\n").unwrap_err().to_string();
    assert!(err.contains("the port is past 65535"), "{err}");
    for wrong in ["localhost", "localhost:99999", "::1:99999"] {
        let err = parse(&format!("listen = \"{wrong}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not ADDRESS:PORT"), "{wrong}: {err}");
    }
}

#[test]
fn a_file_that_does_not_parse_is_named_by_line_never_quoted() {
    const SECRET: &str = "Sup3rS3cretValue";
    for (text, line) in [
        // A secret without its quotes, in a list, where a list of tables belongs, and on
        // a line with something after the value.
        (format!("[providers.x]\nclient_secret={SECRET}\n"), 2),
        (
            format!("[providers.x]\nclient_secret = [\"{SECRET}\"]\n"),
            2,
        ),
        (
            format!("listen = \"127.0.0.1:1\"\nnotify = \"https://h.example/?t={SECRET}\"\n"),
            2,
        ),
        (format!("store = \"redis://:{SECRET}@h:1/0\" x\n"), 1),
        (
            format!("[states]\ndurability = \"{SECRET}\\\"quoted\\\"\" \n"),
            2,
        ),
        // A value where one of a few words, a number or a flag belongs.
        (format!("[providers.x]\nclient_auth = \"{SECRET}\"\n"), 2),
        (format!("durability = '{SECRET}'\n"), 1),
        (format!("durability = \"\"\"\n{SECRET}\"\"\"\n"), 1),
        (format!("[proxy]\ntimeout_seconds = \"{SECRET}\"\n"), 2),
    ] {
        let e = parse(&text).expect_err(&text).to_string();
        assert!(!e.contains(SECRET), "{e}");
        assert!(e.starts_with("config file test.toml: "), "{e}");
        assert!(e.contains(&format!("line {line}, column ")), "{e}");
    }
    // A number where a string belongs.
    let e = parse("[providers.x]\nclient_id = \"a\"\nclient_secret = 8347561209\n")
        .unwrap_err()
        .to_string();
    assert!(
        !e.contains("8347561209") && e.contains("line 3, column "),
        "{e}"
    );
    assert_eq!(
        without_values(r#"invalid type: string "a\"b\\", expected a map"#),
        "invalid type: string, expected a map"
    );
    assert_eq!(
        without_values(r#"string "x" or string "y", expected `"`"#),
        "string or string, expected `\"`"
    );
    assert_eq!(
        without_values("unknown variant `xy`, expected `basic`; integer `7"),
        "unknown variant, expected `basic`; integer"
    );
}

#[test]
fn settings_are_validated_at_start_with_the_key_named() {
    let e = parse("public_url = \"ftp://x\"").unwrap_err().to_string();
    assert!(e.starts_with("public_url:"), "{e}");
    for bad in [
        "https://auth.example//evil.example",
        "https://auth.example/a//b",
        "https://auth.example/oauthd;Domain=evil",
        "https://user@auth.example/",
    ] {
        let e = parse(&format!("public_url = \"{bad}\""))
            .expect_err(bad)
            .to_string();
        assert!(e.starts_with("public_url:"), "{bad}: {e}");
    }
    assert!(parse("public_url = \"https://auth.example/oauthd\"").is_ok());
    let e = parse("return_to_allowlist = [\"/relative\"]")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("return_to_allowlist[0]:"), "{e}");
}

#[test]
fn defaults_are_the_documented_ones() {
    let s = parse("").unwrap();
    assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(s.db, PathBuf::from(DEFAULT_DB));
    assert_eq!(s.states.base.default_ttl, Duration::from_secs(3600));
    assert_eq!(s.states.base.max_ttl, Duration::from_secs(86400));
    assert_eq!(s.sweep.interval, Duration::from_secs(60));
    assert_eq!(s.durability, Durability::Full);
}

#[test]
fn an_address_on_every_interface_stands_for_loopback_in_links() {
    let s = parse("").unwrap();
    let url = |addr: &str| s.public_url_for(addr.parse().unwrap()).to_string();
    assert_eq!(url("0.0.0.0:6288"), "http://127.0.0.1:6288/");
    assert_eq!(url("[::]:6288"), "http://[::1]:6288/");
    assert_eq!(url("192.168.1.5:6288"), "http://192.168.1.5:6288/");
    assert!(s.public_url_hint("0.0.0.0:6288".parse().unwrap()).is_some());
    assert!(s
        .public_url_hint("127.0.0.1:6288".parse().unwrap())
        .is_none());
    let s = parse("public_url = \"https://auth.example.net\"").unwrap();
    assert_eq!(
        s.public_url_for("0.0.0.0:6288".parse().unwrap())
            .to_string(),
        "https://auth.example.net/"
    );
    assert!(s.public_url_hint("0.0.0.0:6288".parse().unwrap()).is_none());
    // On loopback, on another port than oauthd's: a config copied with another port.
    let s = parse("public_url = \"http://127.0.0.1:6288\"").unwrap();
    let hint = |addr: &str| s.public_url_hint(addr.parse().unwrap());
    assert!(hint("127.0.0.1:6288").is_none());
    assert!(hint("0.0.0.0:6288").is_none());
    assert!(hint("192.168.1.5:7000").is_none());
    let said = hint("127.0.0.1:43419").unwrap_or_default();
    assert!(
        said.contains("port 6288, and oauthd listens on port 43419"),
        "{said}"
    );
    let s = parse("public_url = \"http://localhost\"").unwrap();
    assert!(s.public_url_hint("127.0.0.1:80".parse().unwrap()).is_none());
    assert!(s
        .public_url_hint("127.0.0.1:6288".parse().unwrap())
        .is_some());
}

#[test]
fn the_example_config_parses_to_the_defaults() {
    let example = parse(include_str!("../../oauthd.example.toml")).unwrap();
    let defaults = parse("").unwrap();
    // The example names the default database path, as it advises.
    assert!(!example.db_defaulted && defaults.db_defaulted);
    let example = Settings {
        db_defaulted: true,
        ..example
    };
    assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    let e = parse("[states]\ndefault_tll_seconds = 5")
        .unwrap_err()
        .to_string();
    assert!(e.contains("default_tll_seconds"), "{e}");
    let e = parse("[states]\nmax_ttl_seconds = 600\ndefault_ttl_seconds = 3600")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is 3600, more than max_ttl_seconds (600): lower it, or leave it out (then it is the lower of 3600"),
        "{e}"
    );
    let e = parse("[states.namespaces.\"2fa\"]\nmax_ttl_seconds = 600\ndefault_ttl_seconds = 900")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("then it is [states]' default_ttl_seconds, held to"),
        "{e}"
    );
    // The example's states table with only max_ttl_seconds lowered, as the README
    // says to: the default follows it.
    let example = include_str!("../../oauthd.example.toml")
        .replace("max_ttl_seconds = 86400", "max_ttl_seconds = 600");
    let base = parse(&example).map(|s| s.states.base).ok();
    assert_eq!(
        base.map(|b| (b.max_ttl.as_secs(), b.default_ttl.as_secs())),
        Some((600, 600))
    );
    let e = parse("[states]\ndefault_ttl_seconds = 0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("states.default_ttl_seconds"), "{e}");
    let e = parse("listen = \"localhost\"").unwrap_err().to_string();
    assert!(e.starts_with("listen:"), "{e}");
    let e = parse("provider_timeout_seconds = 20\nprovider_answer_wait_seconds = 19")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("provider_answer_wait_seconds")
            && e.contains("between provider_timeout_seconds (20) and 600"),
        "{e}"
    );
    assert!(parse("provider_answer_wait_seconds = 601").is_err());
    // Unset, it is 60 s, or provider_timeout_seconds when that is longer.
    let wait = |toml: &str| parse(toml).map(|s| s.provider_answer_wait.as_secs()).ok();
    assert_eq!(wait(""), Some(60));
    assert_eq!(wait("provider_timeout_seconds = 90"), Some(90));
    assert_eq!(
        wait("provider_timeout_seconds = 2\nprovider_answer_wait_seconds = 5"),
        Some(5)
    );
    let equal = "provider_timeout_seconds = 20\nprovider_answer_wait_seconds = 20";
    assert_eq!(wait(equal), Some(20));
    assert_eq!(wait("provider_answer_wait_seconds = 600"), Some(600));
    let e = parse("[proxy]\ntimeout_seconds = 0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("proxy.timeout_seconds"), "{e}");
    let e = parse("[proxy]\nmax_response_bytes = 10")
        .unwrap_err()
        .to_string();
    assert!(e.contains("proxy.max_response_bytes"), "{e}");
    // The value refused is not repeated (it could be a secret in the wrong place);
    // the key and what it takes are named.
    let e = parse("durability = \"sometimes\"").unwrap_err().to_string();
    assert!(
        e.contains("durability") && e.contains("`full`") && !e.contains("sometimes"),
        "{e}"
    );
    let e = parse("[states.namespaces.\"bad ns\"]\nmax_ttl_seconds = 5")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad ns"), "{e}");
}

#[test]
fn attempts_default_to_five_and_a_create_may_ask_up_to_the_ceiling() {
    let rule = |toml: &str, ns: &str| {
        parse(toml).map(|s| {
            let r = s
                .states
                .rule_for(&crate::namespace::Namespace::parse(ns).unwrap());
            (r.max_attempts, r.attempts_ceiling)
        })
    };
    assert_eq!(rule("", "a").ok(), Some((5, 100)));
    // An unset default follows a lower ceiling, in [states] and in a table.
    assert_eq!(
        rule("[states]\nmax_attempts_ceiling = 3", "a").ok(),
        Some((3, 3))
    );
    let table = "[states.namespaces.\"2fa\"]\nmax_attempts_ceiling = 3";
    assert_eq!(rule(table, "2fa").ok(), Some((3, 3)));
    assert_eq!(rule(table, "other").ok(), Some((5, 100)));
    let both = "[states]\nmax_attempts = 4\n[states.namespaces.\"2fa\"]\nmax_attempts_ceiling = 10";
    assert_eq!(rule(both, "2fa").ok(), Some((4, 10)));
    let lower = "[states]\nmax_attempts = 8\n[states.namespaces.\"2fa\"]\nmax_attempts_ceiling = 3";
    assert_eq!(rule(lower, "2fa").ok(), Some((3, 3)));
    assert!(rule("[states]\nmax_attempts = 0", "a").is_err());
    // A default set above its ceiling is refused, naming both.
    let e = rule("[states]\nmax_attempts = 10\nmax_attempts_ceiling = 5", "a")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("states.max_attempts") && e.contains("more than max_attempts_ceiling (5)"),
        "{e}"
    );
    let e = rule(
        "[states.namespaces.\"2fa\"]\nmax_attempts = 6\nmax_attempts_ceiling = 5",
        "2fa",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("states.namespaces.\"2fa\".max_attempts"), "{e}");
    for bad in [0, 101] {
        let e = rule(&format!("[states]\nmax_attempts_ceiling = {bad}"), "a")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_attempts_ceiling") && e.contains("between 1 and 100"),
            "{e}"
        );
    }
    // A table whose ceiling is looser than a broader table's is warned of.
    let s = parse(
        "[states.namespaces.\"2fa:*\"]\nmax_attempts_ceiling = 5\n\
         [states.namespaces.\"2fa:login\"]\nsliding = false\n",
    )
    .unwrap();
    assert!(
        s.rule_warnings
            .iter()
            .any(|w| w.contains("max_attempts_ceiling is 100")),
        "{:?}",
        s.rule_warnings
    );
}

#[test]
fn an_unset_default_follows_a_lower_max_and_a_set_one_must_fit() {
    let s = parse("[states]\nmax_ttl_seconds = 600").unwrap();
    assert_eq!(s.states.base.default_ttl, Duration::from_secs(600));
    let s = parse("[states]\nmax_ttl_seconds = 7200").unwrap();
    assert_eq!(s.states.base.default_ttl, Duration::from_secs(3600));
    let s = parse("[states]\nmax_ttl_seconds = 600\n[states.namespaces.\"a\"]\nmax_states = 5")
        .unwrap();
    assert_eq!(
        s.states.overrides[0].1.default_ttl,
        Duration::from_secs(600)
    );
    let e = parse("[states]\nmax_ttl_seconds = 600\ndefault_ttl_seconds = 3600")
        .unwrap_err()
        .to_string();
    assert!(e.contains("states.default_ttl_seconds"), "{e}");
}

/// Only the most specific table applies: one that leaves out a limit a broader table
/// sets gets [states]'s, which is said when it is looser (a TTL tweak for one
/// namespace quietly allowing the sliding states its prefix's table forbids).
#[test]
fn a_table_looser_than_a_broader_one_on_what_it_leaves_out_is_said() {
    let s = parse(
        "[states.namespaces.\"bridge:*\"]\nmax_ttl_seconds = 604800\nsliding = false\nmax_states = 50\n\
         [states.namespaces.\"bridge:sess\"]\ndefault_ttl_seconds = 7200\n\
         [states.namespaces.\"bridge:own\"]\nsliding = false\nmax_states = 10\n\
         [states.namespaces.\"other\"]\nmax_states = 5\n",
    )
    .unwrap();
    assert_eq!(
        s.rule_warnings,
        ["[states.namespaces.\"bridge:sess\"] leaves out what a broader table that matches the same namespaces sets, and only the most specific table applies: max_states is 100000 there (from [states]), not 50 as in [states.namespaces.\"bridge:*\"]; sliding is true there (from [states]), not false as in [states.namespaces.\"bridge:*\"]; write them in its table if they should hold there"]
    );
    // What the table leaves out still comes from [states], as before: a config that
    // started keeps its meaning (its maximum here is [states]'s 86400).
    let sess = s
        .states
        .rule_for(&crate::namespace::Namespace::parse("bridge:sess").unwrap());
    assert_eq!(sess.max_ttl, Duration::from_secs(86400));
    assert!(sess.sliding);
    let s = parse("[states.namespaces.\"a\"]\nmax_states = 5\n").unwrap();
    assert!(s.rule_warnings.is_empty(), "{:?}", s.rule_warnings);
}

/// A top-level setting written after a table (at the end of the file) is said to be
/// one, with where it belongs.
#[test]
fn a_top_level_key_after_a_table_is_said_to_belong_above_it() {
    let e = parse("[[notify]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/h\"\nreturn_to_allowlist = [\"http://a\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("return_to_allowlist is a top-level setting") && e.contains("here notify;"),
        "{e}"
    );
    let e = parse("[states]\nmax_states = 5\nlisten = \"127.0.0.1:1\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("listen is a top-level setting"), "{e}");
    // A key that is nowhere a setting gets no such hint.
    for text in [
        "[states]\nmax_statez = 5\n",
        "[states]\n\"max states\" = 5\n",
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(!e.contains("top-level"), "{e}");
    }
}

#[test]
fn namespace_default_is_capped_by_its_max() {
    let s = parse("[states.namespaces.\"2fa:*\"]\nmax_ttl_seconds = 300").unwrap();
    let (_, rule) = &s.states.overrides[0];
    assert_eq!(rule.max_ttl, Duration::from_secs(300));
    assert_eq!(rule.default_ttl, Duration::from_secs(300));
}

#[test]
fn flags_beat_the_file() {
    let file: FileConfig = toml::from_str("listen = \"127.0.0.1:1\"\ndb = \"a.db\"").unwrap();
    let over = Overrides {
        listen: Some("127.0.0.1:2".into()),
        ..Default::default()
    };
    let s = Settings::resolve(file, &over).unwrap();
    assert_eq!(s.listen.port(), 2);
    assert_eq!(s.db, PathBuf::from("a.db"));
}
