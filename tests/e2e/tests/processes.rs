//! The three real binaries as separate processes, configured only through environment
//! variables, talking gRPC over sockets: the whole data path, then SIGTERM.

use std::time::Duration;

use anyhow::{Context, Result};
use huddle_e2e::{eventually, free_addr, http, sign_up, wait_ready, ProcessSettings, Processes, Service, TestEnv, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_binaries_carry_messages_from_socket_to_postgres_and_stop_on_sigterm() -> Result<()> {
    let env = TestEnv::new().await?;
    let (collector, collector_addr) = huddle_e2e::TraceCollector::start().await?;
    let otlp = format!("http://{collector_addr}");
    let services = Processes::start(
        &env,
        &otlp,
        // Slow sweep: the flush that persists the room is the one the gateway asks for.
        ProcessSettings { persister: &[("HUDDLE_SWEEP_INTERVAL_MS", "60000".into())], ..Default::default() },
    )
    .await?;
    // The persister's threads run at nice 10 (HUDDLE_PERSISTER_NICE): its bursts yield
    // to the live path on shared cores. The hydrator's stay at normal priority.
    let (hydrator, persister, gateway) = (&services.hydrators[0], &services.persisters[0], &services.gateways[0]);
    assert_eq!(thread_nice_values(persister.service.pid())?, [10].into(), "persister threads");
    assert_eq!(thread_nice_values(hydrator.service.pid())?, [0].into(), "hydrator threads");
    let base = gateway.url();
    let (gateway_ops, persister_grpc) = (&gateway.ops, &persister.addr);
    let (hydrator_grpc, hydrator_ops, persister_ops) = (&hydrator.addr, &hydrator.ops, &persister.ops);

    let ada = sign_up(&base, "ada").await?;
    let bob = sign_up(&base, "bob").await?;
    let mut a = Ws::join(&base, "processes", &ada.token, "").await?;
    a.expect("history").await?;
    let mut b = Ws::join(&base, "processes", &bob.token, "").await?;
    b.expect("history").await?;
    for i in 1..=10u64 {
        assert_eq!(a.say(&format!("hello {i}"), &format!("p{i}")).await?, i);
        assert_eq!(b.expect("message").await?["seq"], i);
    }
    a.leave().await?;
    b.leave().await?;

    let db = env.db().await?;
    eventually(Duration::from_secs(15), || async {
        let row = db.query_one("SELECT count(*), coalesce(max(seq), 0) FROM messages", &[]).await?;
        Ok((row.get::<_, i64>(0) == 10 && row.get::<_, i64>(1) == 10).then_some(()))
    })
    .await?;
    let mut persister_client = env.persister_client(persister_grpc.parse()?).await?;
    // Without the service token, the internal port answers nothing.
    let mut stranger =
        huddle_proto::v1::persister_client::PersisterClient::connect(format!("http://{persister_grpc}")).await?;
    let refused = stranger.room_status(huddle_proto::v1::RoomStatusRequest { room: "processes".into() }).await;
    assert_eq!(refused.map(|_| ()).unwrap_err().code(), tonic::Code::Unauthenticated);
    // Except the health service: a kubelet's gRPC probe carries no token.
    let channel = tonic::transport::Channel::from_shared(format!("http://{persister_grpc}"))?.connect().await?;
    let probe = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: "huddle.v1.Persister".into() })
        .await?
        .into_inner();
    assert_eq!(probe.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let refused = reflected_services(channel, huddle_proto::auth::BearerToken::new(None)).await.map_err(|s| s.code());
    assert_eq!(refused, Err(tonic::Code::Unauthenticated), "reflection needs the token");
    let status = persister_client
        .room_status(huddle_proto::v1::RoomStatusRequest { room: "processes".into() })
        .await?
        .into_inner();
    assert_eq!((status.last_seq, status.persisted_seq, status.archived_seq), (10, 10, 10));

    // Metrics are on the ops port only, not on the public one.
    assert_eq!(http().get(format!("{base}/metrics")).send().await?.status(), 404);
    let metrics = http().get(format!("http://{gateway_ops}/metrics")).send().await?.text().await?;
    assert!(metrics.contains("huddle_gateway_messages_accepted_total 10"), "{metrics}");
    for (grpc, service) in [(&hydrator_grpc, "huddle.v1.Hydrator"), (&persister_grpc, "huddle.v1.Persister")] {
        let mut services = reflected_services(env.grpc_channel(grpc.parse()?).await?, env.bearer()).await?;
        services.sort();
        // Only what this server serves (the persister listed the hydrator's service too).
        assert_eq!(services, ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", service]);
    }
    for (grpc, service) in [(&hydrator_grpc, "huddle.v1.Hydrator"), (&persister_grpc, "huddle.v1.Persister")] {
        let channel = env.grpc_channel(grpc.parse()?).await?;
        let mut health = tonic_health::pb::health_client::HealthClient::with_interceptor(channel, env.bearer());
        for name in ["", service] {
            let reply = health.check(tonic_health::pb::HealthCheckRequest { service: name.into() }).await?.into_inner();
            assert_eq!(
                reply.status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "{name:?}"
            );
        }
    }
    // The workers' ops port: liveness and their own metrics.
    for (ops, metric) in [(&hydrator_ops, "huddle_hydrations_total"), (&persister_ops, "huddle_tasks_total")] {
        let health = http().get(format!("http://{ops}/healthz")).send().await?;
        assert_eq!(health.status(), 200);
        assert_eq!(health.json::<serde_json::Value>().await?["status"], "ok");
        let metrics = http().get(format!("http://{ops}/metrics")).send().await?.text().await?;
        assert!(metrics.contains(metric), "{ops}/metrics lacks {metric}");
    }

    services.terminate()?;

    // Traces went out over OTLP, and the W3C context crossed RabbitMQ: the gateway's
    // flush request and the persister's tasks for it share one trace.
    let spans = eventually(Duration::from_secs(10), || async {
        let spans = collector.spans();
        let flush = spans.iter().find(|s| s.service == "gateway" && s.name == "flush_request").cloned();
        Ok(flush.and_then(|flush| {
            let tasks = spans
                .iter()
                .filter(|s| s.service == "persister" && s.name == "task" && s.trace_id == flush.trace_id)
                .count();
            (tasks >= 2).then_some(spans.clone())
        }))
    })
    .await
    .with_context(|| {
        let seen: std::collections::BTreeSet<(String, String)> =
            collector.spans().into_iter().map(|s| (s.service, s.name)).collect();
        format!("no gateway→persister trace arrived; spans seen: {seen:?}")
    })?;
    assert!(spans.iter().any(|s| s.service == "gateway" && s.name == "send"));
    assert!(spans.iter().any(|s| s.service == "hydrator" && s.name == "hydrate"));
    env.cleanup().await
}

/// The distinct nice values of the threads of process `pid` (field 19 of each thread's
/// `stat`, counted after the command name, which may hold spaces).
fn thread_nice_values(pid: u32) -> Result<std::collections::BTreeSet<i64>> {
    let mut values = std::collections::BTreeSet::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).context("list threads")? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        let after_name = stat.rsplit_once(')').context("stat without a command name")?.1;
        // Fields after the name start at field 3 (state); nice is field 19.
        let nice = after_name.split_whitespace().nth(19 - 3).context("stat too short")?;
        values.insert(nice.parse()?);
    }
    Ok(values)
}

/// Descriptors the process `pid` has open.
fn open_descriptors(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd")).context("list /proc/<pid>/fd")?.count())
}

/// A hydrator, and a gateway (the executable at `gateway`) on it with `extra` settings;
/// the gateway's process and base URL, once both are ready.
async fn gateway_on_a_hydrator(
    env: &TestEnv,
    gateway: std::path::PathBuf,
    extra: &[(&str, String)],
) -> Result<(Service, Service, String)> {
    let (hydrator_grpc, hydrator_ops) = (free_addr()?, free_addr()?);
    let (gateway_addr, gateway_ops) = (free_addr()?, free_addr()?);
    let hydrator = Service::spawn(
        "huddle-hydrator",
        env,
        "",
        &[("HUDDLE_HYDRATOR_GRPC_ADDR", hydrator_grpc.clone()), ("HUDDLE_HYDRATOR_OPS_ADDR", hydrator_ops.clone())],
    )?;
    wait_ready("hydrator", &format!("http://{hydrator_ops}/readyz")).await?;
    let mut vars = vec![
        ("HUDDLE_GATEWAY_ADDR", gateway_addr.clone()),
        ("HUDDLE_GATEWAY_OPS_ADDR", gateway_ops),
        ("HUDDLE_GATEWAY_WORKERS", "2".into()),
        ("HUDDLE_HYDRATOR_URL", format!("http://{hydrator_grpc}")),
        ("HUDDLE_JOIN_RATE", "1000".into()),
    ];
    vars.extend(extra.iter().cloned());
    let gateway = Service::spawn_binary(gateway, "huddle-gateway", env, "", &vars)?;
    let base = format!("http://{gateway_addr}");
    wait_ready("gateway", &format!("{base}/readyz")).await?;
    Ok((hydrator, gateway, base))
}

/// The open-file limit bounds the sockets a gateway can hold: each costs it one descriptor
/// (a duplicate kept for resetting stuck connections used to make it two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_holds_one_descriptor_per_socket() -> Result<()> {
    const SOCKETS: usize = 300;
    let env = TestEnv::new().await?;
    let (_hydrator, gateway, base) = gateway_on_a_hydrator(&env, huddle_e2e::binary("huddle-gateway")?, &[]).await?;
    let mut users = Vec::new();
    for n in 0..SOCKETS / 10 {
        users.push(sign_up(&base, &format!("fd{n}")).await?);
    }
    // One socket first, so the room, the hub and the pools exist before counting.
    let mut first = Ws::join(&base, "descriptors", &users[0].token, "").await?;
    first.expect("history").await?;
    let before = open_descriptors(gateway.pid())?;
    let mut sockets = Vec::new();
    for n in 0..SOCKETS {
        let mut socket = Ws::join(&base, "descriptors", &users[n % users.len()].token, "").await?;
        socket.expect("history").await?;
        sockets.push(socket);
    }
    let per_socket = (open_descriptors(gateway.pid())? - before) as f64 / SOCKETS as f64;
    assert!((1.0..1.1).contains(&per_socket), "{per_socket:.2} descriptors per socket");
    // Every socket still works: a message reaches the last one opened.
    first.say("still here", "fd-check").await?;
    assert_eq!(sockets.last_mut().context("no socket")?.expect("message").await?["body"], "still here");
    env.cleanup().await
}

/// A gateway whose open-file limit is below `HUDDLE_MAX_CONNECTIONS` holds what the limit
/// allows and refuses the rest with 503 `overloaded`; it never runs out of descriptors
/// (then actix stops accepting, and every later join hangs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_short_of_descriptors_refuses_joins_instead_of_hanging() -> Result<()> {
    const LIMIT: u32 = 400;
    let env = TestEnv::new().await?;
    // The gateway under a low open-file limit, set by a shell that then becomes it.
    let dir = tempfile_dir()?;
    let wrapper = dir.join("gateway-with-low-ulimit");
    let gateway_binary = huddle_e2e::binary("huddle-gateway")?;
    std::fs::write(&wrapper, format!("#!/bin/sh\nulimit -n {LIMIT}\nexec {}\n", gateway_binary.display()))?;
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let (_hydrator, _gateway, base) =
        gateway_on_a_hydrator(&env, wrapper, &[("HUDDLE_ACCOUNT_CONNECTIONS", "1000".into())]).await?;
    let ada = sign_up(&base, "ada").await?;
    let (mut held, mut refused) = (Vec::new(), 0);
    for _ in 0..LIMIT {
        let joined = tokio::time::timeout(Duration::from_secs(10), Ws::join(&base, "full", &ada.token, ""))
            .await
            .context("a join hung: the gateway ran out of descriptors")?;
        match joined {
            Ok(mut socket) => {
                socket.expect("history").await?;
                held.push(socket);
            }
            Err(error) => {
                assert!(error.to_string().contains("503"), "refused otherwise than with 503: {error:#}");
                refused += 1;
            }
        }
    }
    // Well over half the limit is sockets; the rest was refused, not dropped.
    assert!(held.len() > LIMIT as usize / 2, "only {} sockets held", held.len());
    assert!(refused > 0, "all {LIMIT} joins were taken: the cap did not apply");
    // The gateway still answers: a socket that leaves makes room for a new one.
    drop(held.pop());
    let mut again =
        eventually(Duration::from_secs(10), || async { Ok(Ws::join(&base, "full", &ada.token, "").await.ok()) })
            .await?;
    again.expect("history").await?;
    env.cleanup().await
}

/// A client's malformed frame or request is the client's fault: the connection fails with
/// 1002 and the gateway logs that at INFO with the reason; a request that cannot be parsed
/// gets its 400 or 431; and no ERROR line appears (actix-http logs a fragmented control
/// frame and every unparsable request at ERROR, which let any client fill the error log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_malformed_frames_and_requests_are_logged_as_its_fault_not_as_errors() -> Result<()> {
    let env = TestEnv::new().await?;
    let dir = tempfile_dir()?;
    let log = dir.join("gateway.log");
    let wrapper = dir.join("gateway-logging-to-a-file");
    let gateway_binary = huddle_e2e::binary("huddle-gateway")?;
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec {} > {}\n", gateway_binary.display(), log.display()))?;
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let (_hydrator, _gateway, base) = gateway_on_a_hydrator(&env, wrapper, &[("RUST_LOG", "info".into())]).await?;
    let ada = sign_up(&base, "ada").await?;
    let mut ws = Ws::join(&base, "malformed", &ada.token, "").await?;
    ws.expect("history").await?;
    // A ping without FIN (control frames may not be fragmented), masked with key 0.
    ws.write_bytes(&[0x09, 0x81, 0, 0, 0, 0, b'x']).await?;
    assert_eq!(ws.close_code().await?, Some(1002));
    // A request actix-http cannot parse, and one whose head is too large: 400 and 431.
    for (request, status) in [
        ("GARBAGE\r\n\r\n".to_owned(), "HTTP/1.1 400"),
        (format!("GET / HTTP/1.1\r\nhost: x\r\n{}\r\n", "x-filler: y\r\n".repeat(120)), "HTTP/1.1 431"),
    ] {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await?;
        tcp.write_all(request.as_bytes()).await?;
        let mut answer = vec![0; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer)).await??;
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with(status), "{request:.20}: {answer}");
    }

    let failed = eventually(Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(text.lines().find(|line| line.contains("broke the WebSocket protocol")).map(str::to_owned))
    })
    .await?;
    let failed: serde_json::Value = serde_json::from_str(&failed)?;
    assert_eq!(failed["level"], "INFO", "{failed}");
    assert_eq!(failed["close_code"], 1002, "{failed}");
    assert!(failed["reason"].as_str().is_some_and(|reason| !reason.is_empty()), "no reason logged: {failed}");
    let text = std::fs::read_to_string(&log)?;
    let errors: Vec<&str> = text.lines().filter(|line| line.contains(r#""level":"ERROR""#)).collect();
    assert!(errors.is_empty(), "a client's bad input was logged as an error: {errors:?}");
    env.cleanup().await
}

/// A fresh scratch directory under the system's temporary directory.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("huddle-e2e-{}-{}", std::process::id(), huddle_domain::now_ms()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The services a gRPC server lists through server reflection (what `grpcurl list` shows).
async fn reflected_services(
    channel: tonic::transport::Channel,
    token: huddle_proto::auth::BearerToken,
) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::with_interceptor(channel, token)
        .server_reflection_info(futures_util::stream::iter([request]))
        .await?
        .into_inner();
    let reply = replies.message().await?.ok_or_else(|| tonic::Status::internal("no reflection reply"))?;
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => Err(tonic::Status::internal(format!("unexpected reflection reply {other:?}"))),
    }
}

/// A setting that would break a service (a 0 where 0 means nothing, a rate that refuses
/// everything, a log filter that does not parse) stops its binary at start with a message
/// naming it, before the service connects to anything.
#[test]
fn a_service_with_a_setting_it_cannot_use_exits_at_start_naming_it() -> Result<()> {
    // (binary, variable, value, what the error must say, exit code)
    let cases = [
        ("huddle-gateway", "HUDDLE_SEND_BURST", "0", "HUDDLE_SEND_BURST (the environment variable of --send-burst)", 2),
        ("huddle-gateway", "HUDDLE_SEND_RATE", "-1", "HUDDLE_SEND_RATE (the environment variable of --send-rate)", 2),
        ("huddle-gateway", "HUDDLE_AMQP_URL", "not a url", "HUDDLE_AMQP_URL", 2),
        ("huddle-gateway", "HUDDLE_HYDRATOR_URL", "127.0.0.1:50051", "HUDDLE_HYDRATOR_URL", 2),
        ("huddle-gateway", "HUDDLE_ALLOWED_ORIGINS", "not an origin", "HUDDLE_ALLOWED_ORIGINS", 2),
        ("huddle-gateway", "HUDDLE_REDIS_MODE", "ring", "HUDDLE_REDIS_MODE", 2),
        ("huddle-gateway", "RUST_LOG", "info,foo=notalevel", "RUST_LOG", 1),
        ("huddle-persister", "HUDDLE_PREFETCH", "0", "HUDDLE_PREFETCH (the environment variable of --prefetch)", 2),
        ("huddle-persister", "HUDDLE_LOG_FORMAT", "xml", "HUDDLE_LOG_FORMAT", 1),
        ("huddle-hydrator", "HUDDLE_TRACE_FILTER", "=[bad", "HUDDLE_TRACE_FILTER", 1),
        ("huddle-hydrator", "HUDDLE_HYDRATE_WINDOW", "0", "HUDDLE_HYDRATE_WINDOW", 2),
    ];
    let refusal = |service: &str, args: &[&str], variable: &str, value: &str| -> Result<(Option<i32>, String)> {
        let output = std::process::Command::new(huddle_e2e::binary(service)?)
            .args(args)
            .env(variable, value)
            .env("HUDDLE_DEV", "true")
            // Nothing here may be reached: the binary must stop before connecting.
            .env("HUDDLE_DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .env("HUDDLE_REDIS_URL", "redis://127.0.0.1:1")
            .stdin(std::process::Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{service} with {variable}={value:?} panicked: {stderr}");
        assert!(
            !stderr.contains("Connection refused"),
            "{service} with {variable}={value:?} got as far as connecting: {stderr}"
        );
        Ok((output.status.code(), stderr))
    };
    for (service, variable, value, named, code) in cases {
        let (exit, stderr) = refusal(service, &[], variable, value)?;
        assert_eq!(exit, Some(code), "{service} with {variable}={value:?}: {stderr}");
        assert!(stderr.contains(named), "{service} with {variable}={value:?} did not name it: {stderr}");
    }
    // The same value on the command line is reported by its flag, not by a variable that
    // holds a good value.
    let (exit, stderr) = refusal("huddle-gateway", &["--send-burst", "0"], "HUDDLE_SEND_BURST", "50")?;
    assert_eq!(exit, Some(2), "{stderr}");
    assert!(stderr.contains("'--send-burst <SEND_BURST>'") && !stderr.contains("HUDDLE_SEND_BURST"), "{stderr}");
    Ok(())
}
