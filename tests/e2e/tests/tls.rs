//! TLS to the back ends, as managed services require: Redis by `rediss://` URLs,
//! PostgreSQL by `sslmode=require`, RabbitMQ by `amqps://`. The whole write, persist and
//! history path works against servers that accept only TLS, and a server whose certificate the trust store
//! does not vouch for is refused. Certificates are checked against the system's trust
//! store, or the bundle `SSL_CERT_FILE` names, as docs/DEPLOY.md says.
//!
//! Both tests set `SSL_CERT_FILE` for the whole process, to the same test CA.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use huddle_e2e::{eventually, free_addr, sign_up, OwnRedis, Stack, StackOptions, TestEnv, Ws};

/// A CA (`<name>-ca.pem`) and a server certificate for 127.0.0.1 it signed
/// (`<name>.pem`, `<name>.key`), made with the `openssl` command.
fn make_certificates(dir: &Path, name: &str) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("openssl is not installed (apt-get install openssl)")?;
        if !out.status.success() {
            bail!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let (ca, ca_key, key, csr, cert) = (
        format!("{name}-ca.pem"),
        format!("{name}-ca.key"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} test CA"),
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ])?;
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", &key, "-out", &csr])?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        &cert,
    ])?;
    Ok(())
}

/// A Redis of the test's own that speaks TLS on the port it returns (and plain RESP on
/// another, for its own start-up check only), with `name`'s certificate.
fn tls_redis(dir: &Path, name: &str) -> Result<(OwnRedis, u16)> {
    let port: u16 = free_addr()?.rsplit(':').next().context("address has a port")?.parse()?;
    let file = |suffix: &str| dir.join(format!("{name}{suffix}")).display().to_string();
    let redis = OwnRedis::start_with(&[
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &file(".pem"),
        "--tls-key-file",
        &file(".key"),
        "--tls-ca-cert-file",
        &file("-ca.pem"),
        "--tls-auth-clients",
        "no",
    ])?;
    Ok((redis, port))
}

/// The test CAs and certificates, made once: `trusted` (the only CA the process trusts,
/// through `SSL_CERT_FILE`) and `rogue`.
fn certificates() -> Result<&'static Path> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let made = DIR.get_or_init(|| {
        let make = || -> Result<PathBuf> {
            let dir = std::env::temp_dir().join(format!("huddle-tls-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir)?;
            make_certificates(&dir, "trusted")?;
            make_certificates(&dir, "rogue")?;
            // rustls-native-certs reads it each time a client is configured.
            std::env::set_var("SSL_CERT_FILE", dir.join("trusted-ca.pem"));
            Ok(dir)
        };
        make().map_err(|e| format!("{e:#}"))
    });
    made.as_deref().map_err(|e| anyhow::anyhow!("making the test certificates: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_services_talk_to_redis_over_tls_and_refuse_an_unknown_certificate() -> Result<()> {
    let dir = certificates()?;

    let (trusted, trusted_port) = tls_redis(dir, "trusted")?;
    let env = TestEnv::with_redis(format!("rediss://127.0.0.1:{trusted_port}")).await?;
    let stack = Stack::start_on(env, StackOptions { gateways: 1, ..Default::default() }).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let bob = sign_up(&base, "bob").await?;
    let mut ada_ws = Ws::join(&base, "secure", &ada.token, "").await?;
    ada_ws.expect("history").await?;
    let mut bob_ws = Ws::join(&base, "secure", &bob.token, "").await?;
    bob_ws.expect("history").await?;
    let seq = ada_ws.say("over tls", "c1").await?;
    let delivered = loop {
        let frame = bob_ws.expect("message").await?;
        if frame["body"] == "over tls" {
            break frame;
        }
    };
    assert_eq!(delivered["seq"], seq, "bob gets ada's message live, through Redis pub/sub over TLS");
    stack.flush_room("secure").await?;
    stack.wait_persisted(1).await?;
    let history: serde_json::Value = huddle_e2e::http()
        .get(format!("{base}/api/rooms/secure/messages"))
        .bearer_auth(&bob.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(history["messages"][0]["body"], "over tls", "history: {history}");
    stack.shutdown().await?;

    // A server with a certificate of a CA nobody trusts: no connection, a clear error.
    let (_rogue, rogue_port) = tls_redis(dir, "rogue")?;
    let rogue_env = TestEnv::with_redis(format!("rediss://127.0.0.1:{trusted_port}")).await?;
    let mut settings = rogue_env.redis_settings(100);
    settings.redis_url = format!("rediss://127.0.0.1:{rogue_port}");
    let log = huddle_roomlog::RoomLog::connect(&settings)?;
    let refused = log.state(&huddle_domain::RoomName::parse("secure")?).await;
    let error = refused.err().context("a Redis whose certificate is not trusted must be refused")?.to_string();
    assert!(error.to_lowercase().contains("certificate"), "the error names the certificate: {error}");
    rogue_env.cleanup().await?;
    drop(trusted);
    Ok(())
}

/// A PostgreSQL of the test's own that accepts only TLS connections over TCP
/// (`hostssl` in pg_hba.conf) with `name`'s certificate, and plain ones on its Unix
/// socket (the test's own checks, through `psql`). Stopped when dropped.
struct OwnPostgres {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl OwnPostgres {
    fn start(certificates: &Path, name: &str) -> Result<Self> {
        let bin = postgres_bin()?;
        let port: u16 = free_addr()?.rsplit(':').next().context("address has a port")?.parse()?;
        let dir = std::env::temp_dir().join(format!("huddle-pg-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let data = dir.join("data");
        for (from, to) in [(format!("{name}.pem"), "server.pem"), (format!("{name}.key"), "server.key")] {
            std::fs::copy(certificates.join(from), dir.join(to))?;
        }
        // PostgreSQL refuses to run as root and to use a key others can read.
        if is_root() {
            run_ok(Command::new("chown").args(["-R", "postgres"]).arg(&dir))?;
        }
        run_ok(Command::new("chmod").args(["600"]).arg(dir.join("server.key")))?;
        run_ok(server_command(&bin.join("initdb")).args(["-A", "trust", "-U", "postgres", "-D"]).arg(&data))?;
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")?;
        let child = server_command(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on", "-c", "fsync=off"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .arg("-c")
            .arg(format!("ssl_cert_file={}", dir.join("server.pem").display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", dir.join("server.key").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting postgres")?;
        let server = Self { port, dir, child };
        for _ in 0..100 {
            if server.psql("postgres", "SELECT 1").is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the test's own PostgreSQL on port {port} did not start within 10 s")
    }

    /// Runs `sql` through the Unix socket; its output, unaligned.
    fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new("psql")
            .args(["-X", "-At", "-U", "postgres", "-p", &self.port.to_string(), "-d", db, "-c", sql])
            .arg("-h")
            .arg(&self.dir)
            .output()
            .context("psql is not installed (scripts/services.sh installs it)")?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of Debian's PostgreSQL server binaries (initdb, postgres).
fn postgres_bin() -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL's server binaries are not in /usr/lib/postgresql (scripts/services.sh installs them)")?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().context("no initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// `program` run as the `postgres` account when the test runs as root (PostgreSQL will
/// not run as root), as the test's own user otherwise.
fn server_command(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run_ok(command: &mut Command) -> Result<()> {
    let out = command.output()?;
    if !out.status.success() {
        bail!("{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_services_talk_to_postgres_over_tls_and_refuse_an_unknown_certificate() -> Result<()> {
    let dir = certificates()?;
    let postgres = OwnPostgres::start(dir, "trusted")?;
    postgres.psql("postgres", "CREATE DATABASE huddle")?;
    let mut env = TestEnv::new().await?;
    let plaintext = format!("postgres://postgres@127.0.0.1:{}/huddle", postgres.port);
    env.database_url = format!("{plaintext}?sslmode=require");

    // Over TCP the server takes TLS only: a plaintext client is turned away.
    let refused = tokio_postgres::connect(&plaintext, tokio_postgres::NoTls).await;
    let error = refused.err().context("the test's PostgreSQL must refuse plaintext over TCP")?;
    assert!(format!("{error:?}").contains("no encryption"), "refused for being plaintext: {error:?}");

    let stack = Stack::start_on(env, StackOptions { gateways: 1, ..Default::default() }).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut ws = Ws::join(&base, "secure", &ada.token, "").await?;
    ws.expect("history").await?;
    ws.say("stored over tls", "c1").await?;
    stack.flush_room("secure").await?;
    let stored = eventually(Duration::from_secs(15), || async {
        let body = postgres.psql("huddle", "SELECT body FROM messages")?;
        Ok((!body.is_empty()).then_some(body))
    })
    .await?;
    assert_eq!(stored, "stored over tls");
    // The services' connections (over TCP; this check's own psql is on the Unix socket).
    let connections = postgres.psql(
        "huddle",
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.datname = 'huddle' AND a.client_addr IS NOT NULL",
    )?;
    let (encrypted, plain) = connections.split_once('|').context("two counts")?;
    assert!(encrypted.parse::<u32>()? > 0 && plain == "0", "every service connection is encrypted: {connections}");
    stack.shutdown().await?;

    // A server whose certificate a CA nobody trusts signed: no connection, a clear error.
    let rogue = OwnPostgres::start(dir, "rogue")?;
    let settings = huddle_config::PostgresSettings {
        database_url: format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=require", rogue.port),
        database_pool_size: 1,
        database_timeout_ms: 5_000,
    };
    let archive = huddle_archive::Archive::connect(&settings)?;
    let error = archive.ping().await.err().context("a PostgreSQL whose certificate is not trusted must be refused")?;
    assert!(format!("{error}").to_lowercase().contains("certificate"), "the error names the certificate: {error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_services_talk_to_rabbitmq_over_tls_and_refuse_a_certificate_for_another_host() -> Result<()> {
    let dir = certificates()?;
    let port: u16 = free_addr()?.rsplit(':').next().context("address has a port")?.parse()?;
    let file = |name: &str| dir.join(name).display().to_string();
    // TLS only: no plain AMQP listener.
    let config = format!(
        "listeners.tcp = none\nlisteners.ssl.default = {port}\nssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\n\
         ssl_options.fail_if_no_peer_cert = false\n",
        file("trusted-ca.pem"),
        file("trusted.pem"),
        file("trusted.key"),
    );
    let rabbit = huddle_e2e::OwnRabbitCluster::start_with_config(1, &config)?;
    let mut env = TestEnv::new().await?;
    env.amqp_url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");

    let stack = Stack::start_on(env, StackOptions { gateways: 1, ..Default::default() }).await?;
    let base = stack.url(0);
    let ada = sign_up(&base, "ada").await?;
    let mut ws = Ws::join(&base, "secure", &ada.token, "").await?;
    ws.expect("history").await?;
    ws.say("queued over tls", "c1").await?;
    // The gateway's flush task and the persister's chunk tasks go through RabbitMQ.
    stack.flush_room("secure").await?;
    stack.wait_persisted(1).await?;

    // The certificate names 127.0.0.1, not localhost: refused, whoever signed it.
    let mut settings = huddle_config::BrokerSettings {
        amqp_url: format!("amqps://guest:guest@localhost:{port}/%2f"),
        queue_prefix: stack.env.queue_prefix.clone(),
        delivery_limit: 5,
        queue_type: huddle_config::QueueType::Quorum,
        quorum_group_size: None,
    };
    let error = huddle_broker::Broker::connect(&settings)
        .await
        .err()
        .context("a certificate for another host must be refused")?;
    assert!(format!("{error:?}").to_lowercase().contains("certificate"), "the error names the certificate: {error:?}");
    // Nor does plaintext reach it.
    settings.amqp_url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    assert!(huddle_broker::Broker::connect(&settings).await.is_err(), "plaintext AMQP on the TLS port");
    stack.shutdown().await?;
    drop(rabbit);
    Ok(())
}
