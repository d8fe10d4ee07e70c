//! The connections scenario: as many idle, joined sockets on one server process as its
//! open-file limit allows, and what they cost it in memory.
//!
//! The sockets share a few accounts (Huddle; the bench lifts the per-account limit),
//! spread over many rooms, and come from several 127.0.0.x source addresses (so that no
//! address runs out of ephemeral ports) and several generator processes (each has its own
//! open-file limit): `connections` is the coordinator, and starts `connections-worker`
//! copies of itself. Every socket must get its join answer (Huddle's `history` frame,
//! Socket.IO's `joined` event) and still be open after the hold; the server's RSS is read
//! from `/proc/<pid>/status` before, after connecting and after the hold.

use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::target::Target;

/// Connections parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// The server under test.
    #[arg(long, value_enum, default_value = "huddle")]
    pub target: Target,
    /// Its base URL (http://IP:PORT).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The server process whose memory is measured (and whose open-file limit sets the
    /// number of sockets when `--sockets` is 0).
    #[arg(long)]
    pub server_pid: u32,
    /// Sockets to open; 0: as many as the server's open-file limit allows (its soft limit,
    /// less the descriptors it has open, less `--fd-margin`, divided by the descriptors
    /// one socket takes there, measured on a few probe sockets first).
    #[arg(long, default_value_t = 0)]
    pub sockets: usize,
    /// Descriptors left to the server for its own use (pools, files) when `--sockets` is 0.
    #[arg(long, default_value_t = 256)]
    pub fd_margin: usize,
    /// Rooms the sockets spread over.
    #[arg(long, default_value_t = 1000)]
    pub rooms: usize,
    /// Accounts the sockets share (Huddle); coprime to the rooms, so a room's sockets
    /// belong to different accounts.
    #[arg(long, default_value_t = 101)]
    pub accounts: usize,
    /// Source addresses, 127.0.0.2 upwards.
    #[arg(long, default_value_t = 8)]
    pub source_addresses: u8,
    /// Generator processes; 0: one per 15,000 sockets.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Connections being opened at once, per worker.
    #[arg(long, default_value_t = 128)]
    pub in_flight: usize,
    /// Seconds the sockets are held open (idle) before they are checked.
    #[arg(long, default_value_t = 90)]
    pub hold_secs: u64,
    /// Names this run's accounts and rooms.
    #[arg(long, default_value = "bench")]
    pub run_id: String,
    /// Where to append the result as a JSON line.
    #[arg(long)]
    pub out: Option<String>,
    /// Fail (exit non-zero) unless every socket connected and stayed open.
    #[arg(long)]
    pub require_pass: bool,
}

/// What the scenario measured, one line per target.
#[derive(Debug, Serialize)]
pub struct ConnectionsResult {
    /// Always `connections`.
    pub phase: &'static str,
    /// The server under test.
    pub target: Target,
    /// Sockets asked for.
    pub sockets: usize,
    /// Sockets that got their join answer.
    pub connected: u64,
    /// Sockets still open after the hold.
    pub open_after_hold: u64,
    /// Rooms they were in.
    pub rooms: usize,
    /// Accounts they shared (0: the server has none).
    pub accounts: usize,
    /// Generator processes.
    pub workers: usize,
    /// Source addresses.
    pub source_addresses: u8,
    /// The server's soft open-file limit.
    pub server_fd_limit: Option<usize>,
    /// Descriptors the server had open before.
    pub server_fds_before: Option<usize>,
    /// Descriptors one socket takes on the server (measured on the probe sockets).
    pub server_fds_per_socket: Option<f64>,
    /// The server's resident memory before connecting, KiB.
    pub rss_before_kb: u64,
    /// ...once every socket had connected.
    pub rss_connected_kb: u64,
    /// ...after the hold.
    pub rss_held_kb: u64,
    /// (RSS after the hold − before) ÷ sockets open, KiB.
    pub kb_per_socket: f64,
    /// Seconds to open all sockets.
    pub connect_secs: f64,
    /// Seconds they were held.
    pub hold_secs: u64,
    /// Every socket connected and stayed open.
    pub passed: bool,
}

/// What the coordinator gives one worker (a JSON line on its stdin).
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    target: Target,
    url: String,
    run_id: String,
    rooms: usize,
    first: usize,
    count: usize,
    tokens: Vec<String>,
    sources: Vec<IpAddr>,
    in_flight: usize,
}

/// A worker's report after connecting (a JSON line on its stdout).
#[derive(Debug, Serialize, Deserialize)]
struct Connected {
    connected: u64,
    failed: u64,
    first_error: Option<String>,
}

/// A worker's report after the hold.
#[derive(Debug, Serialize, Deserialize)]
struct Held {
    open: u64,
}

/// Resident memory of `pid`, KiB (`VmRSS` of /proc/<pid>/status).
fn rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS for process {pid}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft "Max open files" of /proc/<pid>/limits.
fn parse_fd_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// The server's soft open-file limit and how many descriptors it has open.
fn fd_budget(pid: u32) -> Result<(usize, usize)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).with_context(|| format!("process {pid}"))?;
    let limit = parse_fd_limit(&limits).with_context(|| format!("no open-file limit for process {pid}"))?;
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).with_context(|| format!("fds of {pid}"))?.count();
    Ok((limit, open))
}

/// Runs the scenario (the coordinator).
pub async fn run(args: ConnectionsArgs) -> Result<ConnectionsResult> {
    ensure!(args.rooms > 0 && args.source_addresses > 0, "--rooms and --source-addresses must be at least 1");
    ensure!(args.source_addresses <= 250, "--source-addresses: at most 250 (127.0.0.2-127.0.0.251)");
    // Accounts first, so their password hashing is not in the measurement.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let names: Vec<String> = (0..args.accounts.max(1)).map(|j| format!("{}-c{j}", args.run_id)).collect();
    let tokens: Vec<Result<Option<String>>> = futures_util::stream::iter(&names)
        .map(|name| args.target.account(&http, &args.url, name))
        .buffered(8)
        .collect()
        .await;
    let tokens: Vec<String> = tokens.into_iter().filter_map(|token| token.transpose()).collect::<Result<_>>()?;
    let accounts = tokens.len();
    let sources: Vec<IpAddr> =
        (0..args.source_addresses).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i))).collect();

    let (server_fd_limit, server_fds_before) = match fd_budget(args.server_pid) {
        Ok((limit, open)) => (Some(limit), Some(open)),
        Err(error) if args.sockets > 0 => {
            eprintln!("connections: {error:#} (not needed: --sockets given)");
            (None, None)
        }
        Err(error) => return Err(error),
    };
    let mut server_fds_per_socket = None;
    let sockets = match (args.sockets, server_fd_limit, server_fds_before) {
        (0, Some(limit), Some(open)) => {
            let per_socket = probe_fds_per_socket(&args, &tokens, sources[0]).await?;
            server_fds_per_socket = Some(per_socket);
            (limit.saturating_sub(open + args.fd_margin) as f64 / per_socket) as usize
        }
        (sockets, ..) => sockets,
    };
    ensure!(sockets > 0, "no sockets to open (open-file limit {server_fd_limit:?}, {server_fds_before:?} open)");
    let workers = if args.workers == 0 { sockets.div_ceil(15_000) } else { args.workers }.clamp(1, sockets);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kb = rss_kb(args.server_pid)?;
    eprintln!(
        "{:?}: {sockets} idle sockets (open-file limit {server_fd_limit:?}, {server_fds_before:?} open, {server_fds_per_socket:?} per socket) in {} rooms, {accounts} accounts, {} source addresses, {workers} workers; RSS before {rss_before_kb} KiB",
        args.target, args.rooms, sources.len()
    );
    let started = Instant::now();
    let exe = std::env::current_exe().context("the generator's own path")?;
    let mut children = vec![];
    for w in 0..workers {
        let (first, end) = (sockets * w / workers, sockets * (w + 1) / workers);
        let plan = Plan {
            target: args.target,
            url: args.url.clone(),
            run_id: args.run_id.clone(),
            rooms: args.rooms,
            first,
            count: end - first,
            tokens: tokens.clone(),
            sources: sources.clone(),
            in_flight: args.in_flight,
        };
        let mut child = std::process::Command::new(&exe)
            .arg("connections-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start a connections worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        writeln!(stdin, "{}", serde_json::to_string(&plan)?)?;
        // Its reports, line by line, from a thread (the runtime has no process support).
        let stdout = std::io::BufReader::new(child.stdout.take().context("worker stdout")?);
        let (lines, reports) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        children.push(Worker { child, stdin: Some(stdin), reports });
    }
    // Generous: 20,000 joins at a few hundred a second take a minute or two.
    let deadline = Duration::from_secs(120 + sockets as u64 / 50);
    let (mut connected, mut failed, mut first_error) = (0, 0, None);
    for worker in &mut children {
        let report: Connected = worker.report(deadline).await?;
        connected += report.connected;
        failed += report.failed;
        first_error = first_error.or(report.first_error);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let rss_connected_kb = rss_kb(args.server_pid)?;
    eprintln!(
        "{:?}: {connected} of {sockets} connected in {connect_secs:.1} s ({failed} failed{}); RSS {rss_connected_kb} KiB; holding {} s",
        args.target,
        first_error.as_deref().map(|e| format!(", first: {e}")).unwrap_or_default(),
        args.hold_secs
    );
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let rss_held_kb = rss_kb(args.server_pid)?;
    let mut open_after_hold = 0;
    for worker in &mut children {
        writeln!(worker.stdin.as_mut().context("worker stdin")?, "check")?;
        let report: Held = worker.report(Duration::from_secs(30)).await?;
        open_after_hold += report.open;
    }
    for worker in children {
        worker.end().await;
    }
    let result = ConnectionsResult {
        phase: "connections",
        target: args.target,
        sockets,
        connected,
        open_after_hold,
        rooms: args.rooms,
        accounts,
        workers,
        source_addresses: args.source_addresses,
        server_fd_limit,
        server_fds_before,
        server_fds_per_socket,
        rss_before_kb,
        rss_connected_kb,
        rss_held_kb,
        kb_per_socket: rss_held_kb.saturating_sub(rss_before_kb) as f64 / open_after_hold.max(1) as f64,
        connect_secs,
        hold_secs: args.hold_secs,
        passed: connected == sockets as u64 && open_after_hold == sockets as u64,
    };
    eprintln!(
        "{:?}: {open_after_hold} of {sockets} sockets open after {} s; RSS {rss_before_kb} -> {rss_held_kb} KiB = {:.2} KiB per socket | {}",
        args.target,
        args.hold_secs,
        result.kb_per_socket,
        if result.passed { "pass" } else { "FAIL" }
    );
    crate::append_json_line(args.out.as_deref(), &result)?;
    if args.require_pass && !result.passed {
        bail!("{:?}: {open_after_hold} of {sockets} sockets held", args.target);
    }
    Ok(result)
}

/// Sockets of the probe that measures what one socket costs the server in descriptors.
const PROBE_SOCKETS: usize = 50;

/// Opens [`PROBE_SOCKETS`] sockets, counts the server's descriptors with them open, and
/// closes them again: the descriptors one socket takes there (at least 1).
async fn probe_fds_per_socket(args: &ConnectionsArgs, tokens: &[String], source: IpAddr) -> Result<f64> {
    let (_, before) = fd_budget(args.server_pid)?;
    let mut probes = vec![];
    for i in 0..PROBE_SOCKETS {
        let room = format!("{}-probe-{}", args.run_id, i % 10);
        let token = (!tokens.is_empty()).then(|| tokens[i % tokens.len()].as_str());
        probes.push(args.target.connect_from(&args.url, &room, token, Some(source)).await.context("a probe socket")?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, with_probes) = fd_budget(args.server_pid)?;
    drop(probes);
    let per_socket = (with_probes.saturating_sub(before) as f64 / PROBE_SOCKETS as f64).round().max(1.0);
    eprintln!(
        "{:?}: {PROBE_SOCKETS} probe sockets took {} descriptors on the server: {per_socket} per socket",
        args.target,
        with_probes.saturating_sub(before)
    );
    // Let the server close its side before it is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(per_socket)
}

/// A worker process, its stdin, and the lines of its stdout.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    reports: mpsc::UnboundedReceiver<String>,
}

impl Worker {
    async fn report<T: serde::de::DeserializeOwned>(&mut self, deadline: Duration) -> Result<T> {
        let line = tokio::time::timeout(deadline, self.reports.recv())
            .await
            .context("a connections worker did not report in time")?
            .context("a connections worker ended early (its stderr is above)")?;
        serde_json::from_str(&line).with_context(|| format!("worker report {line:?}"))
    }

    /// Closes its stdin (it closes its sockets and exits); killed if it has not within 30 s.
    async fn end(mut self) {
        drop(self.stdin.take());
        for _ in 0..300 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A coordinator that fails midway leaves no worker behind.
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One worker: reads its plan from stdin, connects, reports, holds the sockets (reading
/// them, so pings are answered), reports how many are still open on `check`, and ends
/// when stdin closes.
pub async fn worker() -> Result<()> {
    // Stdin's lines from a thread (the runtime has no stdin support).
    let (lines, mut stdin) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let line = stdin.recv().await.context("no plan on stdin")?;
    let plan: Plan = serde_json::from_str(&line).context("the plan")?;
    ensure!(!plan.sources.is_empty(), "no source addresses");
    let open = Arc::new(AtomicU64::new(0));
    let attempts = futures_util::stream::iter(plan.first..plan.first + plan.count)
        .map(|i| {
            let room = format!("{}-conn-{}", plan.run_id, i % plan.rooms.max(1));
            let token = (!plan.tokens.is_empty()).then(|| plan.tokens[i % plan.tokens.len()].clone());
            let source = plan.sources[i % plan.sources.len()];
            let (target, url) = (plan.target, plan.url.clone());
            async move {
                // A server out of descriptors stops accepting: such a socket fails, not hangs.
                tokio::time::timeout(
                    Duration::from_secs(30),
                    target.connect_from(&url, &room, token.as_deref(), Some(source)),
                )
                .await
                .context("no join answer within 30 s")?
            }
        })
        .buffer_unordered(plan.in_flight.max(1));
    tokio::pin!(attempts);
    let (mut connected, mut failed, mut first_error) = (0, 0, None);
    while let Some(attempt) = attempts.next().await {
        match attempt {
            Ok((mut client, mut receiver)) => {
                connected += 1;
                open.fetch_add(1, Ordering::Relaxed);
                let open = Arc::clone(&open);
                tokio::spawn(async move {
                    while let Ok(Some(_)) = receiver.next().await {
                        if client.keep_alive().await.is_err() {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(error) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    println!("{}", serde_json::to_string(&Connected { connected, failed, first_error })?);
    while let Some(line) = stdin.recv().await {
        if line.trim() == "check" {
            println!("{}", serde_json::to_string(&Held { open: open.load(Ordering::Relaxed) })?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   12345 kB\nVmSwap: 0 kB\n"), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            20000                20000                files\n";
        assert_eq!(parse_fd_limit(limits), Some(20000));
        assert_eq!(parse_fd_limit("nothing"), None);
    }
}
