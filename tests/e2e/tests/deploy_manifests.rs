//! The deployment files render and name only settings the services really read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `HUDDLE_*` name in `text`.
fn huddle_vars(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("HUDDLE_"))
        .map(str::to_owned)
        .collect()
}

/// The `HUDDLE_*` variables the three binaries accept, from their `--help`.
fn accepted_vars() -> Result<BTreeSet<String>> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().and_then(Path::parent).context("no target dir")?;
    let mut vars = BTreeSet::new();
    for name in ["huddle-gateway", "huddle-persister", "huddle-hydrator"] {
        let path = bin_dir.join(name);
        if !path.exists() {
            bail!("{} is missing: run `cargo build --workspace --bins` first (scripts/test does)", path.display());
        }
        let help = Command::new(&path).arg("--help").output()?;
        vars.extend(huddle_vars(&String::from_utf8_lossy(&help.stdout)));
    }
    Ok(vars)
}

#[test]
fn kustomize_renders_the_three_services_with_probes() -> Result<()> {
    let output = Command::new("kubectl")
        .args(["kustomize", "k8s/base"])
        .current_dir(root())
        .output()
        .context("kubectl is needed to render k8s/ (apt-get install kubectl)")?;
    if !output.status.success() {
        bail!("kubectl kustomize failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let rendered = String::from_utf8(output.stdout)?;
    let documents: Vec<&str> = rendered.split("\n---\n").collect();
    // Top-level `kind:` and `metadata.name` lines (nested ones are indented further).
    let is_kind = |d: &str, kind: &str| d.lines().any(|l| l == format!("kind: {kind}"));
    let has = |kind: &str, name: &str| {
        documents.iter().any(|d| is_kind(d, kind) && d.lines().any(|l| l == format!("  name: {name}")))
    };
    for service in ["huddle-gateway", "huddle-persister", "huddle-hydrator"] {
        assert!(has("Deployment", service), "Deployment {service}");
        assert!(has("Service", service), "Service {service}");
        assert!(has("PodDisruptionBudget", service), "PodDisruptionBudget {service}");
    }
    assert!(has("HorizontalPodAutoscaler", "huddle-gateway"));
    for deployment in documents.iter().filter(|d| is_kind(d, "Deployment")) {
        assert!(deployment.contains("readinessProbe") && deployment.contains("livenessProbe"), "{deployment}");
        assert!(deployment.contains("resources:"), "{deployment}");
    }
    let accepted = accepted_vars()?;
    let unknown: Vec<_> = huddle_vars(&rendered).difference(&accepted).cloned().collect();
    assert!(unknown.is_empty(), "k8s sets settings no service reads: {unknown:?}");
    Ok(())
}

#[test]
fn compose_and_readme_name_only_real_settings() -> Result<()> {
    let accepted = accepted_vars()?;
    for file in ["deploy/compose.yaml", "deploy/Dockerfile", "README.md"] {
        let text = std::fs::read_to_string(root().join(file))?;
        let unknown: Vec<_> = huddle_vars(&text)
            .difference(&accepted)
            // Read by scripts, tests and benchmarks, not by the services.
            .filter(|v| !["HUDDLE_LOG_FORMAT", "HUDDLE_TRACE_FILTER", "HUDDLE_BENCH_REDIS_URL"].contains(&v.as_str()))
            .cloned()
            .collect();
        assert!(unknown.is_empty(), "{file} names settings no service reads: {unknown:?}");
    }
    Ok(())
}
