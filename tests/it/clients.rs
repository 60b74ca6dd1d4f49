//! The client packages (clients/python, clients/typescript) run their own test suites
//! against a real oauthd: this starts it, with the real test provider as provider `peer`
//! (its userinfo endpoint as the proxy's API) and account `default` connected, then runs
//! the suite with the daemon's address and a key in the environment, and plays the person
//! on the other device for a device flow the suite starts.

use crate::common::{self, peer::Peer, Home};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` against a fresh oauthd as described above; returns its output.
async fn run_suite(mut cmd: Command) -> String {
    let peer = Peer::start(3600);
    let home = Home::new();
    let provider = peer.provider_toml_with_api("peer");
    home.write_config(&provider);
    let key = home.create_key("clients", &[]);
    let d = home.start();
    let (status, page) = common::peer::connect(&d, &peer, &key, "default").await;
    assert_eq!(status, 200, "{page}");
    let person = tempfile::tempdir().unwrap();
    let child = cmd
        .env("OAUTHD_URL", &d.url)
        .env("OAUTHD_API_KEY", &key)
        .env("OAUTHD_PROVIDER", "peer")
        .env("OAUTHD_PERSON_DIR", person.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client's tests");
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    // The person: enters each user code the suite leaves at the provider's device page.
    let started = Instant::now();
    let mut approved = 0;
    while !output.is_finished() {
        if let Some(code) = take(&person.path().join("device")) {
            let page = peer.verify_device(&code, true).await;
            assert!(!page.contains("error"), "{page}");
            approved += 1;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("the client's tests ran for more than 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = output.await.unwrap().expect("the client's tests");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the client's tests failed:\n{text}");
    assert_eq!(approved, 1, "one device flow approved\n{text}");
    assert!(!home.log_text().contains("panicked"));
    text
}

fn take(file: &Path) -> Option<String> {
    let code = std::fs::read_to_string(file).ok()?;
    std::fs::remove_file(file).ok()?;
    Some(code.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_passes_its_tests_against_a_real_oauthd() {
    let dir = root().join("clients/python");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.exists(),
        "clients/python/.venv is missing: run scripts/test (it builds and installs the wheel)"
    );
    let mut cmd = Command::new(python);
    // The installed wheel, not the source tree: what `pip install` would give an app.
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&dir)
        .env_remove("PYTHONPATH");
    let out = run_suite(cmd).await;
    assert!(out.contains(" passed"), "{out}");
    assert!(!out.contains("skipped"), "{out}");
    println!("{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_client_passes_its_tests_against_a_real_oauthd() {
    let dir = root().join("clients/typescript");
    assert!(
        dir.join("dist/index.js").exists(),
        "clients/typescript/dist is missing: run scripts/test (it runs npm ci and the build)"
    );
    // The test files by name: Node.js 20 searches a directory given to --test, 22 takes
    // the argument as a file or a glob and cannot find a directory.
    let mut files: Vec<String> = std::fs::read_dir(dir.join("test"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".test.js"))
        .map(|name| format!("test/{name}"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no test files in clients/typescript/test"
    );
    let mut cmd = Command::new("node");
    cmd.arg("--test").args(&files).current_dir(&dir);
    let out = run_suite(cmd).await;
    assert!(out.contains("# fail 0"), "{out}");
    assert!(!out.contains("# tests 0\n"), "{out}");
    assert!(out.contains("# skipped 0"), "{out}");
    println!("{out}");
}
