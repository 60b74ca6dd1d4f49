//! Names the commit oauthd is built from, for `--version`, the start's first log line and
//! the `oauthd_build_info` metric: the README speaks of behaviour by date, and an operator
//! needs to tell which build runs. `OAUTHD_BUILD_COMMIT` (and `OAUTHD_BUILD_DATE`) name
//! them where the source is not a git checkout (a tarball); otherwise git is asked, and
//! "unknown" is said when it cannot tell.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    // A checkout another user owns (a CI's, a root build of a user's clone) is read all
    // the same: only its commit is asked.
    let out = Command::new("git")
        .args(["-c", "safe.directory=*"])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=OAUTHD_BUILD_COMMIT");
    println!("cargo:rerun-if-env-changed=OAUTHD_BUILD_DATE");
    // A new commit changes HEAD or the branch it names (a worktree's HEAD is its own, its
    // branches the repository's: git says where each is). Only files that are there are
    // watched: cargo runs a script again at every build for one that is not. And only this
    // source tree's own repository, not one it happens to be unpacked inside.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let ours = git(&["rev-parse", "--show-toplevel"]).is_some_and(|top| {
        std::fs::canonicalize(&top).ok() == std::fs::canonicalize(&manifest).ok()
    });
    if ours {
        let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
        watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
        for name in watched {
            if let Some(file) = git(&["rev-parse", "--git-path", &name]) {
                let file = std::path::Path::new(&manifest).join(file);
                if file.exists() {
                    println!("cargo:rerun-if-changed={}", file.display());
                }
            }
        }
    }
    let commit = std::env::var("OAUTHD_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            ours.then(|| git(&["rev-parse", "--short=12", "HEAD"]))
                .flatten()
        })
        .unwrap_or_else(|| "unknown".into());
    let date = std::env::var("OAUTHD_BUILD_DATE")
        .ok()
        .filter(|d| !d.is_empty())
        .or_else(|| ours.then(|| git(&["log", "-1", "--format=%cs"])).flatten())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OAUTHD_COMMIT={commit}");
    println!("cargo:rustc-env=OAUTHD_COMMIT_DATE={date}");
}
