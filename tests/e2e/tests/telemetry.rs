//! What an operator sees of one message and one cold join through the three real
//! binaries: traces (one per message, one per join) that cross RabbitMQ and gRPC with
//! their parents right, metrics pushed over OTLP, and a scrape that holds every metric
//! the dashboards and alert rules ask for.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use huddle_e2e::{eventually, http, sign_up, ProcessSettings, Processes, ReceivedSpan, TestEnv, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_and_a_cold_join_are_traced_across_the_services_and_measured() -> Result<()> {
    let env = TestEnv::new().await?;
    let (collector, collector_addr) = huddle_e2e::TraceCollector::start().await?;
    let otlp = format!("http://{collector_addr}");
    let export_often = ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned());
    let services = Processes::start(
        &env,
        &otlp,
        ProcessSettings {
            hydrator: std::slice::from_ref(&export_often),
            // The sweep ticks once at start (the lag gauges), then not for a minute: the range
            // is claimed by the message's own flush, not by a sweep's, so its trace goes on.
            persister: &[("HUDDLE_SWEEP_INTERVAL_MS", "60000".into()), export_often.clone()],
            // Every message queues a flush: the message's own trace reaches PostgreSQL.
            gateway: &[("HUDDLE_FLUSH_BACKLOG", "1".into()), export_often.clone()],
            ..ProcessSettings::default()
        },
    )
    .await?;
    let (hydrator, persister, gateway) = (&services.hydrators[0], &services.persisters[0], &services.gateways[0]);
    let base = gateway.url();

    let ada = sign_up(&base, "ada").await?;
    // A room nobody used: the join hydrates it through the hydrator.
    let mut socket = Ws::join(&base, "traced", &ada.token, "").await?;
    socket.expect("history").await?;
    assert_eq!(socket.say("hello", "traced-1").await?, 1);
    let refused = socket.send_for_answer("", "traced-2").await?;
    assert_ne!(refused["type"], "ack", "an empty body is refused: {refused}");
    let db = env.db().await?;
    eventually(Duration::from_secs(15), || async {
        Ok((db.query_one("SELECT count(*) FROM messages", &[]).await?.get::<_, i64>(0) == 1).then_some(()))
    })
    .await
    .context("the message never reached PostgreSQL")?;

    // Eight callers hydrate one cold room at once: one loads it, and each call is counted
    // once (a caller that waited is not counted per poll).
    let hydrator_client = env.hydrator_client(hydrator.addr.parse()?).await?;
    let calls = (0..8).map(|_| {
        let mut hydrator = hydrator_client.clone();
        async move { hydrator.hydrate_room(huddle_proto::v1::HydrateRoomRequest { room: "crowded".into() }).await }
    });
    for reply in futures_util::future::join_all(calls).await {
        reply?;
    }
    let hydrations = http().get(format!("http://{}/metrics", hydrator.ops)).send().await?.text().await?;
    let count = |outcome: &str| -> u64 {
        let prefix = format!("huddle_hydrations_total{{outcome=\"{outcome}\"}} ");
        hydrations.lines().find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok()).unwrap_or(0)
    };
    assert_eq!(count("loaded"), 2, "the join's room and the crowded one, each loaded once:\n{hydrations}");
    assert_eq!(count("loaded") + count("waited") + count("warm"), 9, "one count per call:\n{hydrations}");

    // The scrape after this traffic holds every metric the dashboards and alerts query.
    let mut scraped = String::new();
    let persister_ops = &persister.ops;
    for ops in [&gateway.ops, persister_ops, &hydrator.ops] {
        // The persister's lag gauges are set by its sweep's first tick.
        let text = eventually(Duration::from_secs(5), || async {
            let text = http().get(format!("http://{ops}/metrics")).send().await?.text().await?;
            Ok((ops != persister_ops || text.contains("huddle_persister_oldest_unpersisted_seconds")).then_some(text))
        })
        .await
        .with_context(|| format!("{ops}/metrics"))?;
        scraped.push_str(&text);
    }
    let sent = scraped.lines().find(|l| l.starts_with("huddle_gateway_sends_refused_total{")).unwrap_or_default();
    assert!(sent.ends_with(" 1"), "one refused send is counted: {sent:?}");
    check_dashboards_against(&scraped)?;
    socket.leave().await?;

    services.terminate()?;

    // The message's trace: send → append → flush request → the persister's flush task →
    // its chunk task → the PostgreSQL store.
    // On a timeout the checks run once more on what arrived, to say what is missing.
    let spans = eventually(Duration::from_secs(10), || async {
        let spans = collector.spans();
        Ok((message_trace(&spans).is_ok() && join_trace(&spans).is_ok()).then_some(spans))
    })
    .await
    .unwrap_or_else(|_| collector.spans());
    message_trace(&spans)?;
    join_trace(&spans)?;

    // Metrics went out over OTLP from each service, under its own service.name.
    let pushed = eventually(Duration::from_secs(5), || async {
        let metrics = collector.metrics();
        let want = [
            ("gateway", "huddle_gateway_messages_accepted"),
            ("gateway", "huddle_grpc_client"),
            ("persister", "huddle_persister_messages_written"),
            ("persister", "huddle_tasks"),
            ("hydrator", "huddle_hydrations"),
            ("hydrator", "huddle_grpc_server"),
        ];
        let all = want.iter().all(|(service, name)| metrics.contains(&(service.to_string(), name.to_string())));
        Ok(all.then_some(metrics))
    })
    .await
    .with_context(|| format!("metrics over OTLP: {:?}", collector.metrics()))?;
    assert!(pushed.iter().all(|(service, _)| ["gateway", "persister", "hydrator"].contains(&service.as_str())));
    env.cleanup().await
}

/// `child` is a span of `parent`'s trace whose parent is `parent`.
fn is_child(child: &ReceivedSpan, parent: &ReceivedSpan) -> bool {
    child.trace_id == parent.trace_id && child.parent_span_id == parent.span_id
}

/// The one span named `name` of `service` that `accept` takes.
fn find<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    name: &str,
    accept: impl Fn(&ReceivedSpan) -> bool,
) -> Result<&'a ReceivedSpan> {
    spans.iter().find(|s| s.service == service && s.name == name && accept(s)).with_context(|| {
        let seen: std::collections::BTreeSet<_> = spans.iter().map(|s| (&s.service, &s.name)).collect();
        format!("no {service} span {name:?} in its place; spans seen: {seen:?}")
    })
}

fn message_trace(spans: &[ReceivedSpan]) -> Result<()> {
    let send =
        find(spans, "gateway", "send", |s| s.attributes.get("client_id").map(String::as_str) == Some("traced-1"))?;
    if !send.parent_span_id.is_empty() {
        bail!("a message's send span is the root of its trace: {send:?}");
    }
    let append = find(spans, "gateway", "append", |s| is_child(s, send))?;
    let request = find(spans, "gateway", "flush_request", |s| is_child(s, append))?;
    let flush = find(spans, "persister", "task", |s| {
        is_child(s, request) && s.attributes.get("queue").is_some_and(|q| q.ends_with("flush"))
    })?;
    let chunk = find(spans, "persister", "task", |s| {
        is_child(s, flush) && s.attributes.get("queue").is_some_and(|q| q.ends_with("chunk"))
    })?;
    find(spans, "persister", "store", |s| is_child(s, chunk))?;
    Ok(())
}

fn join_trace(spans: &[ReceivedSpan]) -> Result<()> {
    let call = find(spans, "gateway", "grpc_client", |s| {
        s.attributes.get("rpc.method").map(String::as_str) == Some("huddle.v1.Hydrator/HydrateRoom")
            && spans.iter().any(|join| join.service == "gateway" && join.name == "join" && is_child(s, join))
    })?;
    let join = find(spans, "gateway", "join", |s| is_child(call, s))?;
    if !join.parent_span_id.is_empty() {
        bail!("a join is the root of its trace: {join:?}");
    }
    let served = find(spans, "hydrator", "grpc", |s| is_child(s, call))?;
    let hydrate = find(spans, "hydrator", "hydrate", |s| is_child(s, served))?;
    find(spans, "hydrator", "archive_read", |s| is_child(s, hydrate))?;
    find(spans, "hydrator", "redis_restore", |s| is_child(s, hydrate))?;
    Ok(())
}

/// Runs `scripts/check-observability` on the metric names in `scrape` (Prometheus text):
/// every metric a dashboard panel or an alert rule uses must be among them.
fn check_dashboards_against(scrape: &str) -> Result<()> {
    let names: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let file = std::env::temp_dir().join(format!("huddle-scraped-{}.txt", std::process::id()));
    std::fs::write(&file, names.iter().copied().collect::<Vec<_>>().join("\n"))?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = std::process::Command::new(root.join("scripts/check-observability"))
        .arg(&file)
        .current_dir(&root)
        .output()
        .context("scripts/check-observability could not run (python3 is needed)")?;
    let _ = std::fs::remove_file(&file);
    if !output.status.success() {
        bail!(
            "the dashboards or alerts use metrics the services do not export:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
