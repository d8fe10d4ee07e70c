//! The web client in headless Chromium (tests/browser/chat.test.mjs, Playwright) against
//! an in-process stack. Missing Chromium, Node or playwright-core is a failure with the
//! command that installs them, never a skip.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};
use huddle_e2e::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_works_in_a_real_browser() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let browser_dir = root.join("tests/browser");
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !PathBuf::from(&chromium).exists() || !browser_dir.join("node_modules/playwright-core").exists() {
        bail!("Chromium ({chromium}) or playwright-core is missing: run scripts/browser-deps.sh (scripts/test does)");
    }
    let stack = Stack::start(1).await?;
    let url = stack.url(0);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "chat.test.mjs"])
            .current_dir(&browser_dir)
            .env("HUDDLE_URL", url)
            .env("CHROMIUM_PATH", chromium)
            .output()
    })
    .await??;
    if !output.status.success() {
        bail!(
            "browser test failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stack.shutdown().await
}
