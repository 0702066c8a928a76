//! Test support shared by the crates' tests (a dev-dependency only).

/// A check of test `test` that needs `tool` skips when it is missing, noting why in `$UNETR_SKIP_LOG` (CI
/// prints the list at the end). Under `CI=true` a missing tool fails the test instead, unless CI could not
/// install it (`.ci/run` lists those in `UNETR_CI_UNAVAILABLE`): a skip there must never hide a forgotten
/// install.
pub fn skip_or_fail(test: &str, tool: &str, why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let unavailable = std::env::var("UNETR_CI_UNAVAILABLE").unwrap_or_default();
    if ci && !unavailable.split(',').any(|t| t.trim() == tool) {
        panic!("{tool} is missing under CI=true, and CI did not report it uninstallable: {why}");
    }
    eprintln!("note: {tool} missing ({why}): skipped");
    if let Ok(log) = std::env::var("UNETR_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{test}: {tool} missing ({why})");
        }
    }
}
