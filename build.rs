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
    // A new commit changes HEAD or the branch it names.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/packed-refs");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{branch}");
        }
    }
    let commit = std::env::var("OAUTHD_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let date = std::env::var("OAUTHD_BUILD_DATE")
        .ok()
        .filter(|d| !d.is_empty())
        .or_else(|| git(&["log", "-1", "--format=%cs"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OAUTHD_COMMIT={commit}");
    println!("cargo:rustc-env=OAUTHD_COMMIT_DATE={date}");
}
