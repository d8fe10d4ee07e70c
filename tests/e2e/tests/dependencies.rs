//! The dependency policy, checked offline from `cargo metadata` (the licence and bans
//! checks `cargo deny check licenses bans` would make; cargo-deny itself is not built in
//! CI, see docs/SECURITY.md): every crate in the build has a permissive or weak-copyleft
//! licence, no banned crate is in the graph, and duplicate versions do not grow.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde_json::Value;

/// Licences a crate may carry (SPDX ids).
const ALLOWED_LICENCES: &[&str] = &[
    "MIT",
    "MIT-0",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "0BSD",
    "CC0-1.0",
    "Unlicense",
    "BSL-1.0",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "CDLA-Permissive-2.0",
    "MPL-2.0",
];

/// Crates that must not be in the build: TLS is rustls only (no system OpenSSL to
/// install), and no second async runtime.
const BANNED: &[&str] = &["openssl", "openssl-sys", "native-tls", "async-std"];

/// The most crates that may be in the build in more than one version (today's count: it
/// may only go down). The 10th is itertools 0.13, which criterion brings to the gateway's
/// micro-benchmarks only; the 11th const-oid 0.9, which tokio-postgres-rustls (PostgreSQL
/// over TLS) reads certificates with, next to the 0.10 of the sha2 crates. The other 9
/// (block-buffer 0.10, cpufeatures 0.2, crypto-common 0.1, digest 0.10, hmac 0.12, nom 7,
/// sha1 0.10, sha2 0.10, synstructure 0.13) come with lapin's TLS (`amqps://`): tcp-stream
/// ties its rustls support to p12-keystore, whatever the trust roots, and p12-keystore
/// is on the older RustCrypto releases.
const MAX_DUPLICATED_CRATES: usize = 20;

/// Whether an SPDX expression is satisfied by the allowed licences: one alternative of
/// `OR` whose every `AND` term is allowed.
fn licence_allowed(expression: &str) -> bool {
    let expression = expression.replace(['(', ')'], "").replace('/', " OR ");
    expression
        .split(" OR ")
        .any(|alternative| alternative.split(" AND ").all(|term| ALLOWED_LICENCES.contains(&term.trim())))
}

fn packages() -> Result<Vec<Value>> {
    let metadata = huddle_e2e::cargo_metadata()?;
    let in_build: BTreeSet<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .context("resolve")?
        .iter()
        .filter_map(|node| node["id"].as_str())
        .collect();
    Ok(metadata["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| in_build.contains(id)))
        .cloned()
        .collect())
}

#[test]
fn the_licence_check_can_fail() {
    assert!(licence_allowed("MIT OR Apache-2.0"));
    assert!(licence_allowed("(MIT OR Apache-2.0) AND Unicode-3.0"));
    assert!(licence_allowed("MIT/Apache-2.0"));
    assert!(!licence_allowed("GPL-3.0-only"));
    assert!(!licence_allowed("MIT AND AGPL-3.0"));
}

#[test]
fn every_crate_in_the_build_has_an_allowed_licence() -> Result<()> {
    let packages = packages()?;
    let refused: Vec<String> = packages
        .iter()
        .filter(|p| !p["license"].as_str().is_some_and(licence_allowed))
        .map(|p| format!("{} {}: {}", p["name"], p["version"], p["license"]))
        .collect();
    eprintln!("{} crates checked", packages.len());
    assert!(packages.len() > 100, "the whole graph was read ({} crates)", packages.len());
    assert!(refused.is_empty(), "crates without an allowed licence:\n{}", refused.join("\n"));
    Ok(())
}

#[test]
fn no_banned_crate_and_duplicates_do_not_grow() -> Result<()> {
    let packages = packages()?;
    let names: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let banned: Vec<&&str> = names.iter().filter(|name| BANNED.contains(name)).collect();
    assert!(banned.is_empty(), "banned crates in the build: {banned:?}");
    let mut versions: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for package in &packages {
        if let (Some(name), Some(version)) = (package["name"].as_str(), package["version"].as_str()) {
            versions.entry(name).or_default().insert(version);
        }
    }
    let duplicated: Vec<String> = versions
        .iter()
        .filter(|(_, versions)| versions.len() > 1)
        .map(|(name, versions)| format!("{name} {versions:?}"))
        .collect();
    eprintln!("{} crates in more than one version:\n{}", duplicated.len(), duplicated.join("\n"));
    assert!(
        duplicated.len() <= MAX_DUPLICATED_CRATES,
        "{} crates are in the build in more than one version (at most {MAX_DUPLICATED_CRATES})",
        duplicated.len()
    );
    Ok(())
}
