//! The layout keeps its shape: arrows only from services to crates, each store's client
//! library behind the one crate that owns that store, and no service compiled with an
//! HTTP stack or a store it does not use. Read from `cargo metadata`, so a new
//! dependency that breaks a rule fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde_json::Value;

const SERVICES: [&str; 3] = ["huddle-gateway", "huddle-persister", "huddle-hydrator"];

/// Workspace packages and their normal (non-dev) dependencies: direct ones by name, and
/// the transitive closure by package name.
struct Graph {
    direct: BTreeMap<String, BTreeSet<String>>,
    closure: BTreeMap<String, BTreeSet<String>>,
}

fn graph() -> Result<Graph> {
    let metadata = huddle_e2e::cargo_metadata()?;
    let name_of: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let members: BTreeSet<&str> =
        metadata["workspace_members"].as_array().context("members")?.iter().filter_map(Value::as_str).collect();
    // Normal dependencies of every package in the resolved graph, by id.
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in metadata["resolve"]["nodes"].as_array().context("resolve")? {
        let id = node["id"].as_str().context("node id")?;
        let normal = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|dep| dep["dep_kinds"].as_array().into_iter().flatten().any(|kind| kind["kind"].is_null()));
        edges.insert(id, normal.filter_map(|dep| dep["pkg"].as_str()).collect());
    }
    let mut graph = Graph { direct: BTreeMap::new(), closure: BTreeMap::new() };
    for &member in &members {
        let name = name_of[member].to_owned();
        let direct = edges.get(member).into_iter().flatten().map(|id| name_of[id].to_owned()).collect();
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = edges.get(member).cloned().unwrap_or_default();
        while let Some(id) = stack.pop() {
            if seen.insert(name_of[id].to_owned()) {
                stack.extend(edges.get(id).into_iter().flatten());
            }
        }
        graph.direct.insert(name.clone(), direct);
        graph.closure.insert(name, seen);
    }
    Ok(graph)
}

#[test]
fn dependencies_point_from_services_to_crates_and_each_store_has_one_owner() -> Result<()> {
    let graph = graph()?;
    let mut broken = Vec::new();
    for (package, direct) in &graph.direct {
        // Test tools reach into the stores to cause and check faults (the bench deletes a
        // room's keys on its own Redis to measure a cold hydrate).
        let is_test_tool = ["huddle-e2e", "huddle-load", "huddle-bench"].contains(&package.as_str());
        for service in SERVICES {
            if direct.contains(service) && !is_test_tool {
                broken.push(format!("{package} depends on the service {service}"));
            }
        }
        // Each store's client library belongs to one crate; services and other crates go
        // through it. (The gateway holds its Redis pub/sub connections itself.)
        for (library, owners) in [
            ("tokio-postgres", &["huddle-archive"][..]),
            ("deadpool-postgres", &["huddle-archive"][..]),
            ("lapin", &["huddle-broker"][..]),
            ("deadpool-redis", &["huddle-roomlog"][..]),
            ("redis", &["huddle-roomlog", "huddle-gateway"][..]),
        ] {
            if direct.contains(library) && !owners.contains(&package.as_str()) && !is_test_tool {
                broken.push(format!("{package} uses {library} directly; only {owners:?} may"));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
    Ok(())
}

#[test]
fn the_domain_knows_no_store_and_no_transport() -> Result<()> {
    let graph = graph()?;
    let domain = &graph.closure["huddle-domain"];
    for forbidden in ["redis", "tokio-postgres", "lapin", "actix-web", "tonic", "axum", "tokio"] {
        assert!(!domain.contains(forbidden), "huddle-domain pulls in {forbidden}");
    }
    Ok(())
}

#[test]
fn workers_are_built_without_the_gateways_http_stack() -> Result<()> {
    let graph = graph()?;
    for worker in ["huddle-persister", "huddle-hydrator", "huddle-worker", "huddle-telemetry"] {
        let closure = &graph.closure[worker];
        for forbidden in ["actix-web", "actix-ws", "argon2"] {
            assert!(!closure.contains(forbidden), "{worker} pulls in {forbidden}");
        }
    }
    assert!(graph.closure["huddle-gateway"].contains("actix-web"), "the rule above tests nothing");
    Ok(())
}
