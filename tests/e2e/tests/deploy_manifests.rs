//! The deployment files render and name only settings the services really read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

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

// ---------------------------------------------------------------------------------------
// The rendered Kubernetes sets (Helm chart and kustomize overlays), checked against the
// code: scripts/k8s-check renders and schema-validates them and writes each as JSON.
// ---------------------------------------------------------------------------------------

/// One option of a binary's `--help`: its environment variable, default and whether it
/// is required (secrets: "required unless `--dev`").
struct HelpEntry {
    env: String,
    default: Option<String>,
    required: bool,
}

/// What one binary reads, from its `--help` and from the telemetry crate.
struct Binary {
    name: &'static str,
    entries: Vec<HelpEntry>,
    reads: BTreeSet<String>,
}

impl Binary {
    /// Listen-address settings (`*_ADDR`): they must name 0.0.0.0 in a pod.
    fn addr_settings(&self) -> impl Iterator<Item = &HelpEntry> {
        self.entries.iter().filter(|e| e.env.ends_with("_ADDR"))
    }

    /// Settings a pod cannot do without: the required ones, and every one whose default
    /// names the loopback address (a URL or a listen address that is wrong in a pod).
    fn needed(&self) -> BTreeSet<&str> {
        self.entries
            .iter()
            .filter(|e| e.required || e.default.as_deref().is_some_and(|d| d.contains("127.0.0.1")))
            .map(|e| e.env.as_str())
            .collect()
    }
}

fn help_entries(help: &str) -> Vec<HelpEntry> {
    let mut chunks: Vec<String> = Vec::new();
    for line in help.lines() {
        if line.trim_start().starts_with('-') {
            chunks.push(String::new());
        }
        if let Some(chunk) = chunks.last_mut() {
            chunk.push_str(line);
            chunk.push(' ');
        }
    }
    let tag = |chunk: &str, tag: &str| {
        chunk.find(tag).map(|at| {
            let rest = &chunk[at + tag.len()..];
            rest[..rest.find(']').unwrap_or(rest.len())].to_owned()
        })
    };
    chunks
        .iter()
        .filter_map(|chunk| {
            let env = tag(chunk, "[env: ")?;
            let env: String = env.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            Some(HelpEntry { env, default: tag(chunk, "[default: "), required: chunk.contains("required unless") })
        })
        .collect()
}

/// The three binaries, as built next to this test.
fn binaries() -> Result<Vec<Binary>> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().and_then(Path::parent).context("no target dir")?;
    // Read by crates/telemetry in every service (straight from the environment, so not in --help).
    let telemetry = std::fs::read_to_string(root().join("crates/telemetry/src/lib.rs"))?;
    let telemetry_vars: BTreeSet<String> =
        huddle_vars(&telemetry).into_iter().filter(|v| telemetry.contains(&format!("\"{v}\""))).collect();
    assert!(telemetry_vars.contains("HUDDLE_TRACE_FILTER"), "{telemetry_vars:?}");
    let mut binaries = Vec::new();
    for name in ["huddle-gateway", "huddle-persister", "huddle-hydrator"] {
        let path = bin_dir.join(name);
        if !path.exists() {
            bail!("{} is missing: run `cargo build --workspace --bins` first (scripts/test does)", path.display());
        }
        let help = String::from_utf8(Command::new(&path).arg("--help").output()?.stdout)?;
        let entries = help_entries(&help);
        assert!(entries.len() > 10, "{name} --help: too few settings parsed:\n{help}");
        let mut reads: BTreeSet<String> = entries.iter().map(|e| e.env.clone()).collect();
        reads.extend(telemetry_vars.iter().cloned());
        binaries.push(Binary { name, entries, reads });
    }
    Ok(binaries)
}

/// Runs scripts/k8s-check into `dir` and reads every set it wrote.
fn render_sets(dir: &Path) -> Result<BTreeMap<String, Vec<Value>>> {
    let output = Command::new(root().join("scripts/k8s-check"))
        .arg(dir)
        .current_dir(root())
        .output()
        .context("running scripts/k8s-check")?;
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("scripts/k8s-check failed:\n{log}");
    }
    eprintln!("{log}");
    let mut sets = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_stem().context("no stem")?.to_string_lossy().into_owned();
            let docs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
            sets.insert(name, docs);
        }
    }
    Ok(sets)
}

fn text(value: &Value) -> Option<&str> {
    value.as_str()
}

fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or(&Value::Null)
}

/// Whether `labels` satisfy a label selector's `matchLabels` (an empty one selects all).
fn selects(match_labels: &Value, labels: &Value) -> bool {
    match_labels.as_object().is_none_or(|wanted| wanted.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// A workload's pods: their labels and their spec.
struct Pods<'a> {
    kind: &'a str,
    name: &'a str,
    labels: &'a Value,
    spec: &'a Value,
}

impl Pods<'_> {
    fn containers(&self) -> impl Iterator<Item = &Value> {
        at(self.spec, "/containers").as_array().into_iter().flatten()
    }

    /// Every (name, number) of the containers' ports.
    fn ports(&self) -> Vec<(Option<&str>, u64)> {
        self.containers()
            .flat_map(|c| at(c, "/ports").as_array().into_iter().flatten())
            .filter_map(|p| Some((text(at(p, "/name")), at(p, "/containerPort").as_u64()?)))
            .collect()
    }

    /// The container port a Service target, probe or policy port names (a number or a name).
    fn port(&self, port: &Value) -> Option<u64> {
        let ports = self.ports();
        match port {
            Value::Number(n) => ports.iter().map(|(_, p)| *p).find(|p| Some(*p) == n.as_u64()),
            Value::String(name) => ports.iter().find(|(n, _)| *n == Some(name.as_str())).map(|(_, p)| *p),
            _ => None,
        }
    }
}

fn pods(docs: &[Value]) -> Vec<Pods<'_>> {
    docs.iter()
        .filter(|d| matches!(text(at(d, "/kind")), Some("Deployment" | "StatefulSet")))
        .map(|d| Pods {
            kind: text(at(d, "/kind")).unwrap_or_default(),
            name: text(at(d, "/metadata/name")).unwrap_or_default(),
            labels: at(d, "/spec/template/metadata/labels"),
            spec: at(d, "/spec/template/spec"),
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter().find(|d| text(at(d, "/kind")) == Some(kind) && text(at(d, "/metadata/name")) == Some(name))
}

fn of_kind<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter().filter(move |d| text(at(d, "/kind")) == Some(kind))
}

/// Keys of a rendered Secret (`data` and `stringData`) with their decoded lengths.
fn secret_keys(secret: &Value) -> BTreeMap<String, usize> {
    let mut keys = BTreeMap::new();
    for (key, value) in at(secret, "/data").as_object().into_iter().flatten() {
        let encoded = value.as_str().unwrap_or_default().trim_end_matches('=');
        keys.insert(key.clone(), encoded.len() * 3 / 4);
    }
    for (key, value) in at(secret, "/stringData").as_object().into_iter().flatten() {
        keys.insert(key.clone(), value.as_str().unwrap_or_default().len());
    }
    keys
}

/// Where a container's variable comes from.
#[derive(Debug)]
enum Setting {
    Value(String),
    /// A key of a Secret: (secret, key, decoded length when the Secret is in the set).
    Secret(String, String, Option<usize>),
}

/// A container's environment, resolved against the set's ConfigMaps and Secrets
/// (`env` wins over `envFrom`, as in Kubernetes).
fn environment(
    docs: &[Value],
    container: &Value,
    problems: &mut Vec<String>,
    at_where: &str,
) -> BTreeMap<String, Setting> {
    let mut env = BTreeMap::new();
    for from in at(container, "/envFrom").as_array().into_iter().flatten() {
        if let Some(name) = text(at(from, "/configMapRef/name")) {
            match find(docs, "ConfigMap", name) {
                Some(map) => {
                    for (key, value) in at(map, "/data").as_object().into_iter().flatten() {
                        env.insert(key.clone(), Setting::Value(value.as_str().unwrap_or_default().to_owned()));
                    }
                }
                None => problems.push(format!("{at_where}: envFrom names ConfigMap {name}, which is not in the set")),
            }
        } else {
            // A whole Secret would hide which settings it sets, and give each service the others'.
            problems.push(format!("{at_where}: envFrom {from}: only ConfigMaps; read secrets per key"));
        }
    }
    for var in at(container, "/env").as_array().into_iter().flatten() {
        let name = text(at(var, "/name")).unwrap_or_default().to_owned();
        if let Some(value) = text(at(var, "/value")) {
            env.insert(name, Setting::Value(value.to_owned()));
        } else if let (Some(secret), Some(key)) =
            (text(at(var, "/valueFrom/secretKeyRef/name")), text(at(var, "/valueFrom/secretKeyRef/key")))
        {
            let length = match find(docs, "Secret", secret) {
                Some(doc) => match secret_keys(doc).get(key) {
                    Some(length) => Some(*length),
                    None => {
                        problems.push(format!(
                            "{at_where}: {name} reads key {key} of Secret {secret}, which has no such key"
                        ));
                        None
                    }
                },
                None => None, // managed outside the manifests (existingSecret, prod overlay)
            };
            env.insert(name, Setting::Secret(secret.to_owned(), key.to_owned(), length));
        } else if let (Some(map), Some(key)) =
            (text(at(var, "/valueFrom/configMapKeyRef/name")), text(at(var, "/valueFrom/configMapKeyRef/key")))
        {
            match find(docs, "ConfigMap", map).and_then(|m| text(at(m, &format!("/data/{key}")))) {
                Some(value) => env.insert(name, Setting::Value(value.to_owned())),
                None => {
                    problems.push(format!("{at_where}: {name} reads {map}/{key}, which is not in the set"));
                    None
                }
            };
        } else {
            problems.push(format!("{at_where}: {name} has a source this test does not understand: {var}"));
        }
    }
    env
}

/// Facts the manifests must agree with, taken from the code.
struct Facts {
    binaries: Vec<Binary>,
    /// deploy/Dockerfile's user.
    uid: u64,
    /// The gateway's actix `shutdown_timeout`: how long it waits for connections on SIGTERM.
    gateway_shutdown_secs: u64,
}

fn facts() -> Result<Facts> {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile"))?;
    let uid = dockerfile
        .split("--uid")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .context("deploy/Dockerfile: no useradd --uid")?;
    let gateway = std::fs::read_to_string(root().join("services/gateway/src/lib.rs"))?;
    let gateway_shutdown_secs = gateway
        .split(".shutdown_timeout(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|secs| secs.trim().parse().ok())
        .context("services/gateway/src/lib.rs: no .shutdown_timeout(N)")?;
    Ok(Facts { binaries: binaries()?, uid, gateway_shutdown_secs })
}

/// The port number of a `host:port` listen address.
fn addr_port(addr: &str) -> Option<u64> {
    addr.rsplit_once(':').and_then(|(_, port)| port.parse().ok())
}

/// A container whose `SSL_CERT_FILE` is set must read it from a ConfigMap volume mounted
/// where the variable points (the chart's `trustedCA`).
fn check_trusted_ca(set: &str, pods: &Pods, problems: &mut Vec<String>) {
    for container in pods.containers() {
        let env = at(container, "/env").as_array().into_iter().flatten();
        let Some(file) =
            env.filter(|v| text(at(v, "/name")) == Some("SSL_CERT_FILE")).find_map(|v| text(at(v, "/value")))
        else {
            continue;
        };
        let mounted = at(container, "/volumeMounts").as_array().into_iter().flatten().any(|mount| {
            let (Some(path), Some(volume)) = (text(at(mount, "/mountPath")), text(at(mount, "/name"))) else {
                return false;
            };
            file.starts_with(&format!("{path}/"))
                && at(pods.spec, "/volumes")
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| text(at(v, "/name")) == Some(volume) && at(v, "/configMap/name").is_string())
        });
        if !mounted {
            problems.push(format!("{set}: {}: SSL_CERT_FILE {file} is not in a mounted ConfigMap", pods.name));
        }
    }
}

fn check_set(set: &str, docs: &[Value], facts: &Facts, problems: &mut Vec<String>) {
    let all_pods = pods(docs);
    let mut by_binary: BTreeMap<&str, &Pods> = BTreeMap::new();
    for binary in &facts.binaries {
        let matching: Vec<&Pods> = all_pods
            .iter()
            .filter(|p| p.containers().any(|c| text(at(c, "/command/0")) == Some(binary.name)))
            .collect();
        match matching.as_slice() {
            [one] if one.kind == "Deployment" => {
                by_binary.insert(binary.name, one);
            }
            _ => problems.push(format!("{set}: want one Deployment running {}, found {}", binary.name, matching.len())),
        }
    }
    for binary in &facts.binaries {
        if let Some(pods) = by_binary.get(binary.name) {
            check_service(set, docs, binary, pods, &by_binary, facts, problems);
        }
    }
    check_services(set, docs, &all_pods, problems);
    for pods in by_binary.values() {
        check_trusted_ca(set, pods, problems);
    }
    check_network_policies(set, docs, facts, &by_binary, &all_pods, problems);
    for pdb in of_kind(docs, "PodDisruptionBudget") {
        let selector = at(pdb, "/spec/selector/matchLabels");
        if !all_pods.iter().any(|p| selects(selector, p.labels)) {
            problems.push(format!("{set}: PodDisruptionBudget {} selects no pods", at(pdb, "/metadata/name")));
        }
    }
    for name in by_binary.values().map(|p| p.name) {
        let covered = of_kind(docs, "PodDisruptionBudget").any(|pdb| {
            by_binary.values().any(|p| p.name == name && selects(at(pdb, "/spec/selector/matchLabels"), p.labels))
        });
        if !covered {
            problems.push(format!("{set}: no PodDisruptionBudget covers {name}"));
        }
    }
    for hpa in of_kind(docs, "HorizontalPodAutoscaler") {
        let target = text(at(hpa, "/spec/scaleTargetRef/name")).unwrap_or_default();
        if text(at(hpa, "/apiVersion")) != Some("autoscaling/v2") || find(docs, "Deployment", target).is_none() {
            problems.push(format!(
                "{set}: HorizontalPodAutoscaler {} scales {target}, no Deployment of the set",
                at(hpa, "/metadata/name")
            ));
        }
    }
}

fn check_service(
    set: &str,
    docs: &[Value],
    binary: &Binary,
    pods: &Pods,
    by_binary: &BTreeMap<&str, &Pods>,
    facts: &Facts,
    problems: &mut Vec<String>,
) {
    let name = binary.name;
    let Some(container) = pods.containers().find(|c| text(at(c, "/command/0")) == Some(name)) else { return };
    let here = format!("{set}: {name}");
    let env = environment(docs, container, problems, &here);

    // Only settings the service reads (a misspelt or foreign one is silently ignored).
    for var in env.keys().filter(|v| v.starts_with("HUDDLE_")) {
        if !binary.reads.contains(var) {
            problems.push(format!("{here}: sets {var}, which {name} does not read (not in its --help)"));
        }
    }
    // Every setting it needs.
    for needed in binary.needed() {
        if !env.contains_key(needed) {
            problems.push(format!("{here}: does not set {needed} (required, or its default names 127.0.0.1)"));
        }
    }
    // Secrets long enough to start without dev mode (the base holds placeholders to replace).
    let dev = matches!(env.get("HUDDLE_DEV"), Some(Setting::Value(v)) if v == "true" || v == "1");
    if dev {
        problems.push(format!("{here}: HUDDLE_DEV is on"));
    }
    for entry in binary.entries.iter().filter(|e| e.required) {
        if let Some(Setting::Secret(secret, key, Some(length))) = env.get(&entry.env) {
            if *length < 32 && set != "kustomize-base" {
                problems
                    .push(format!("{here}: {key} of Secret {secret} is {length} bytes; the service wants 32 or more"));
            }
        }
        if let Some(Setting::Value(_)) = env.get(&entry.env) {
            problems.push(format!("{here}: {} is a plain value; secrets come from a Secret", entry.env));
        }
    }

    // Listen addresses: 0.0.0.0, and exactly the container's ports.
    let mut listen_ports = BTreeSet::new();
    for entry in binary.addr_settings() {
        match env.get(&entry.env) {
            Some(Setting::Value(addr)) if addr.starts_with("0.0.0.0:") => {
                listen_ports.insert(addr_port(addr).unwrap_or_default());
            }
            other => problems.push(format!("{here}: {} is {other:?}, not 0.0.0.0:<port>", entry.env)),
        }
    }
    let container_ports: BTreeSet<u64> = pods.ports().iter().map(|(_, p)| *p).collect();
    if container_ports != listen_ports {
        problems.push(format!(
            "{here}: container ports {container_ports:?} differ from the listened ports {listen_ports:?}"
        ));
    }
    let port_of = |suffix: &str| {
        binary.addr_settings().find(|e| e.env.ends_with(suffix)).and_then(|e| match env.get(&e.env) {
            Some(Setting::Value(addr)) => addr_port(addr),
            _ => None,
        })
    };
    let ops_port = port_of("_OPS_ADDR");
    let grpc_port = port_of("_GRPC_ADDR");
    // The ports serving /healthz and /readyz: the ops port, and the gateway's public port.
    let probe_ports: BTreeSet<u64> = [ops_port, (name == "huddle-gateway").then(|| port_of("GATEWAY_ADDR")).flatten()]
        .into_iter()
        .flatten()
        .collect();

    // Probes name real endpoints on the right ports.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")] {
        let spec = at(container, &format!("/{probe}"));
        if spec.is_null() {
            if probe != "startupProbe" {
                problems.push(format!("{here}: no {probe}"));
            }
            continue;
        }
        if !at(spec, "/httpGet").is_null() {
            let port = pods.port(at(spec, "/httpGet/port"));
            if text(at(spec, "/httpGet/path")) != Some(path) {
                problems.push(format!("{here}: {probe} asks {} (want {path})", at(spec, "/httpGet/path")));
            }
            if !port.is_some_and(|p| probe_ports.contains(&p)) {
                problems.push(format!("{here}: {probe} on port {port:?}, which serves no probes ({probe_ports:?} do)"));
            }
        } else if !at(spec, "/grpc").is_null() {
            let port = at(spec, "/grpc/port").as_u64();
            if grpc_port.is_none() || port != grpc_port {
                problems.push(format!("{here}: gRPC {probe} on port {port:?}, not the gRPC port {grpc_port:?}"));
            }
            // grpc.health.v1 answers without the token (processes.rs checks it), and
            // each worker names its own service in the health protocol.
            let service = text(at(spec, "/grpc/service")).unwrap_or_default();
            if !service.starts_with("huddle.v1.") {
                problems.push(format!("{here}: gRPC {probe} asks for service {service:?}, not the worker's own"));
            }
        } else {
            problems.push(format!("{here}: {probe} is neither httpGet nor grpc: {spec}"));
        }
    }

    // The gateway finds the hydrator through a Service onto its gRPC port.
    if name == "huddle-gateway" {
        match env.get("HUDDLE_HYDRATOR_URL") {
            Some(Setting::Value(url)) => check_hydrator_url(&here, docs, url, by_binary, problems),
            other => problems.push(format!("{here}: HUDDLE_HYDRATOR_URL is {other:?}")),
        }
        // On SIGTERM: preStop sleep, then up to shutdown_timeout for the sockets (1012), then flushes.
        let pre_stop = at(container, "/lifecycle/preStop/exec/command/1")
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or_else(|| at(container, "/lifecycle/preStop/sleep/seconds").as_u64());
        let grace = at(pods.spec, "/terminationGracePeriodSeconds").as_u64().unwrap_or(30);
        match pre_stop {
            None => problems.push(format!("{here}: no preStop sleep (new sockets would land on a stopping pod)")),
            Some(sleep) if grace < sleep + facts.gateway_shutdown_secs + 10 => problems.push(format!(
                "{here}: terminationGracePeriodSeconds {grace} < preStop {sleep} s + drain {} s + 10 s to flush",
                facts.gateway_shutdown_secs
            )),
            Some(_) => {}
        }
    }

    // Hardened, as the image's user.
    let pod_sc = at(pods.spec, "/securityContext");
    let sc = at(container, "/securityContext");
    let either = |field: &str| {
        let own = at(sc, field);
        if own.is_null() {
            at(pod_sc, field)
        } else {
            own
        }
    };
    let wants: [(&str, Value); 6] = [
        ("/runAsNonRoot", Value::Bool(true)),
        ("/runAsUser", Value::from(facts.uid)),
        ("/readOnlyRootFilesystem", Value::Bool(true)),
        ("/allowPrivilegeEscalation", Value::Bool(false)),
        ("/capabilities/drop", serde_json::json!(["ALL"])),
        ("/seccompProfile/type", Value::from("RuntimeDefault")),
    ];
    for (field, want) in wants {
        if either(field) != &want {
            problems.push(format!("{here}: securityContext{field} is {}, want {want}", either(field)));
        }
    }
    for field in ["/resources/requests/cpu", "/resources/requests/memory", "/resources/limits/memory"] {
        if at(container, field).is_null() {
            problems.push(format!("{here}: no {field}"));
        }
    }
    if at(pods.spec, "/enableServiceLinks") != &Value::Bool(false) {
        problems
            .push(format!("{here}: enableServiceLinks is not false (Services named huddle-* inject HUDDLE_* names)"));
    }
    if let (Some(ops), Some(annotated)) = (ops_port, find_pod_annotation(docs, pods.name, "prometheus.io/port")) {
        if annotated != ops.to_string() {
            problems.push(format!("{here}: prometheus.io/port {annotated}, but /metrics is on {ops}"));
        }
    } else {
        problems.push(format!("{here}: no prometheus.io/port annotation"));
    }
}

fn find_pod_annotation(docs: &[Value], deployment: &str, key: &str) -> Option<String> {
    let doc = find(docs, "Deployment", deployment)?;
    at(doc, "/spec/template/metadata/annotations").get(key).and_then(Value::as_str).map(str::to_owned)
}

fn check_hydrator_url(
    here: &str,
    docs: &[Value],
    url: &str,
    by_binary: &BTreeMap<&str, &Pods>,
    problems: &mut Vec<String>,
) {
    let Some(hydrator) = by_binary.get("huddle-hydrator") else { return };
    let hostport = url.strip_prefix("http://").unwrap_or_default();
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "80"));
    let port: u64 = port.trim_end_matches('/').parse().unwrap_or_default();
    let grpc = hydrator.port(&Value::from("grpc"));
    let reaches = find(docs, "Service", host).is_some_and(|service| {
        selects(at(service, "/spec/selector"), hydrator.labels)
            && at(service, "/spec/ports").as_array().into_iter().flatten().any(|p| {
                at(p, "/port").as_u64() == Some(port)
                    && hydrator.port(at(p, "/targetPort")).is_some()
                    && hydrator.port(at(p, "/targetPort")) == grpc
            })
    });
    if !reaches {
        problems.push(format!(
            "{here}: HUDDLE_HYDRATOR_URL {url} is no Service port onto the hydrator's gRPC port {grpc:?}"
        ));
    }
}

fn check_services(set: &str, docs: &[Value], all_pods: &[Pods], problems: &mut Vec<String>) {
    for service in of_kind(docs, "Service") {
        let name = text(at(service, "/metadata/name")).unwrap_or_default();
        let selector = at(service, "/spec/selector");
        let selected: Vec<&Pods> =
            all_pods.iter().filter(|p| selector.is_object() && selects(selector, p.labels)).collect();
        if selected.is_empty() {
            problems.push(format!("{set}: Service {name} selects no pods"));
        }
        for port in at(service, "/spec/ports").as_array().into_iter().flatten() {
            let target = match at(port, "/targetPort") {
                Value::Null => at(port, "/port"),
                target => target,
            };
            for pods in &selected {
                if pods.port(target).is_none() {
                    problems.push(format!(
                        "{set}: Service {name} targets port {target}, which {} does not have",
                        pods.name
                    ));
                }
            }
        }
    }
    // Routes into the cluster name a Service port.
    let service_port = |service: &str, port: &Value| {
        find(docs, "Service", service).is_some_and(|s| {
            at(s, "/spec/ports").as_array().into_iter().flatten().any(|p| match port {
                Value::String(_) => at(p, "/name") == port,
                _ => at(p, "/port") == port,
            })
        })
    };
    for ingress in of_kind(docs, "Ingress") {
        for path in at(ingress, "/spec/rules")
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| at(r, "/http/paths").as_array().into_iter().flatten())
        {
            let service = text(at(path, "/backend/service/name")).unwrap_or_default();
            let port = at(path, "/backend/service/port");
            let port = if at(port, "/name").is_null() { at(port, "/number") } else { at(port, "/name") };
            if !service_port(service, port) {
                problems.push(format!("{set}: Ingress backend {service}:{port} is no Service port"));
            }
        }
        let annotations = at(ingress, "/metadata/annotations");
        for key in ["nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"]
        {
            if annotations.get(key).and_then(Value::as_str).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) < 3600 {
                problems.push(format!("{set}: Ingress {key} is not at least 3600 s: WebSockets would be cut"));
            }
        }
    }
    for route in of_kind(docs, "HTTPRoute") {
        for backend in at(route, "/spec/rules")
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| at(r, "/backendRefs").as_array().into_iter().flatten())
        {
            let service = text(at(backend, "/name")).unwrap_or_default();
            if !service_port(service, at(backend, "/port")) {
                problems.push(format!("{set}: HTTPRoute backend {backend} is no Service port"));
            }
        }
    }
    for monitor in of_kind(docs, "ServiceMonitor") {
        let selector = at(monitor, "/spec/selector/matchLabels");
        let services: Vec<&Value> =
            of_kind(docs, "Service").filter(|s| selects(selector, at(s, "/metadata/labels"))).collect();
        if services.is_empty() {
            problems.push(format!("{set}: ServiceMonitor {} selects no Service", at(monitor, "/metadata/name")));
        }
        for endpoint in at(monitor, "/spec/endpoints").as_array().into_iter().flatten() {
            for service in &services {
                let ok = at(service, "/spec/ports")
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| at(p, "/name") == at(endpoint, "/port"));
                if !ok || text(at(endpoint, "/path")) != Some("/metrics") {
                    problems.push(format!(
                        "{set}: ServiceMonitor endpoint {endpoint} is not /metrics on a port of {}",
                        at(service, "/metadata/name")
                    ));
                }
            }
        }
    }
}

fn check_network_policies(
    set: &str,
    docs: &[Value],
    facts: &Facts,
    by_binary: &BTreeMap<&str, &Pods>,
    all_pods: &[Pods],
    problems: &mut Vec<String>,
) {
    let Some(gateway) = by_binary.get("huddle-gateway") else { return };
    for binary in facts.binaries.iter().filter(|b| b.name != "huddle-gateway") {
        let Some(pods) = by_binary.get(binary.name) else { continue };
        let here = format!("{set}: {}", binary.name);
        let port_named = |suffix: &str| {
            binary.addr_settings().find(|e| e.env.ends_with(suffix)).and_then(|e| {
                pods.containers()
                    .flat_map(|c| at(c, "/env").as_array().into_iter().flatten())
                    .find(|v| text(at(v, "/name")) == Some(e.env.as_str()))
                    .and_then(|v| text(at(v, "/value")).and_then(addr_port))
            })
        };
        let (Some(grpc), Some(ops)) = (port_named("_GRPC_ADDR"), port_named("_OPS_ADDR")) else {
            problems.push(format!("{here}: no gRPC or ops listen address to check policies against"));
            continue;
        };
        let policies: Vec<&Value> = of_kind(docs, "NetworkPolicy")
            .filter(|p| {
                if !at(p, "/spec/podSelector/matchExpressions").is_null() {
                    problems.push(format!(
                        "{here}: NetworkPolicy {} uses matchExpressions (not understood here)",
                        at(p, "/metadata/name")
                    ));
                }
                selects(at(p, "/spec/podSelector/matchLabels"), pods.labels)
                    && at(p, "/spec/policyTypes").as_array().is_none_or(|t| t.iter().any(|t| t == "Ingress"))
            })
            .collect();
        if policies.is_empty() {
            problems.push(format!("{here}: no NetworkPolicy restricts who reaches its gRPC port {grpc}"));
            continue;
        }
        let mut gateway_allowed = false;
        for policy in policies {
            let name = at(policy, "/metadata/name");
            for rule in at(policy, "/spec/ingress").as_array().into_iter().flatten() {
                let ports: BTreeSet<Option<u64>> =
                    at(rule, "/ports").as_array().into_iter().flatten().map(|p| pods.port(at(p, "/port"))).collect();
                if ports.is_empty() {
                    problems.push(format!("{here}: NetworkPolicy {name} has a rule open on every port: {rule}"));
                    continue;
                }
                if ports.contains(&Some(grpc)) {
                    if ports.len() != 1 {
                        problems
                            .push(format!("{here}: NetworkPolicy {name}: the gRPC rule opens more ports: {ports:?}"));
                    }
                    let peers: Vec<&Value> = at(rule, "/from").as_array().into_iter().flatten().collect();
                    let only_gateway = !peers.is_empty()
                        && peers.iter().all(|peer| {
                            let keys: Vec<&String> = peer.as_object().map(|o| o.keys().collect()).unwrap_or_default();
                            let labels = at(peer, "/podSelector/matchLabels");
                            keys == ["podSelector"]
                                && at(peer, "/podSelector/matchExpressions").is_null()
                                && selects(labels, gateway.labels)
                                && all_pods
                                    .iter()
                                    .filter(|p| p.name != gateway.name)
                                    .all(|p| !selects(labels, p.labels))
                        });
                    if only_gateway {
                        gateway_allowed = true;
                    } else {
                        problems.push(format!(
                            "{here}: NetworkPolicy {name} lets more than gateway pods reach gRPC {grpc}: {rule}"
                        ));
                    }
                } else if ports != BTreeSet::from([Some(ops)]) {
                    problems.push(format!(
                        "{here}: NetworkPolicy {name} opens ports {ports:?}; only gRPC {grpc} and ops {ops} exist"
                    ));
                }
            }
        }
        if !gateway_allowed {
            problems.push(format!("{here}: no NetworkPolicy rule lets the gateway pods reach gRPC port {grpc}"));
        }
    }
}

#[test]
fn rendered_k8s_sets_match_what_the_services_read_and_serve() -> Result<()> {
    let facts = facts()?;
    let dir = std::env::temp_dir().join(format!("huddle-k8s-rendered-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sets = render_sets(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let sets = sets?;
    let names: Vec<&str> = sets.keys().map(String::as_str).collect();
    assert_eq!(names, ["helm-default", "helm-prod", "kustomize-base", "kustomize-dev", "kustomize-prod"]);
    let mut problems = Vec::new();
    for (set, docs) in &sets {
        check_set(set, docs, &facts, &mut problems);
    }
    // The production example trusts its back ends' CA (`trustedCA`): each service has it.
    let with_ca = pods(&sets["helm-prod"])
        .iter()
        .flat_map(|p| p.containers().collect::<Vec<_>>())
        .filter(|c| {
            at(c, "/env").as_array().into_iter().flatten().any(|v| text(at(v, "/name")) == Some("SSL_CERT_FILE"))
        })
        .count();
    assert_eq!(with_ca, 3, "helm-prod: SSL_CERT_FILE on the three services");
    assert!(problems.is_empty(), "{} problem(s) in the rendered manifests:\n{}", problems.len(), problems.join("\n"));
    Ok(())
}

#[test]
fn the_help_parser_finds_defaults_and_required_secrets() {
    let help = "Options:\n      --addr <ADDR>\n          Address [env: HUDDLE_GATEWAY_ADDR=] [default: 127.0.0.1:8080]\n      \
                --grpc-token <GRPC_TOKEN>\n          Shared secret, at least 32 bytes; required unless `--dev` [env: HUDDLE_GRPC_TOKEN]\n  \
                -h, --help\n          Print help\n";
    let entries = help_entries(help);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].env, "HUDDLE_GATEWAY_ADDR");
    assert_eq!(entries[0].default.as_deref(), Some("127.0.0.1:8080"));
    assert!(!entries[0].required);
    assert_eq!(entries[1].env, "HUDDLE_GRPC_TOKEN");
    assert!(entries[1].required && entries[1].default.is_none());
}
