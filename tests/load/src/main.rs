//! `huddle-load`: drives many WebSocket clients across many rooms the way a real client
//! should behave (reconnect with `since`, resend unacked messages with the same
//! client_id), records what was acked and what each client saw, and checks that against
//! PostgreSQL.
//!
//! * `huddle-load run …` writes a JSON report of the acked messages and client views.
//! * `huddle-load verify …` compares a report with PostgreSQL and prints acked,
//!   persisted, lost, duplicated, out-of-order and per-room seq gaps.

mod client;
mod verify;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(name = "huddle-load", about = "Huddle load generator and delivery checker")]
enum Cli {
    /// Run clients and write a report.
    Run(RunArgs),
    /// Compare a report with PostgreSQL.
    Verify(verify::VerifyArgs),
}

/// Load parameters.
#[derive(Parser, Clone, Debug)]
pub struct RunArgs {
    /// Gateway base URLs, comma-separated; clients spread over them and fail over.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    pub url: Vec<String>,
    /// Rooms to spread clients over.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Messages each client sends.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Messages per second per client.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Give up on unacked messages after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Names rooms, users and client_ids of this run (default: random).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Where to write the report.
    #[arg(long, default_value = "load-report.json")]
    pub out: String,
}

/// One acked message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Acked {
    /// The room it was sent to.
    pub room: String,
    /// The seq the gateway's ack gave it.
    pub seq: u64,
    /// The client's idempotency id, `<run>-<client>-<n>`.
    pub client_id: String,
}

/// What one client did and saw.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ClientReport {
    /// Every message acked, once per client_id.
    pub acked: Vec<Acked>,
    /// Distinct messages sent (resends not counted).
    pub sent: usize,
    /// Messages never acked by the deadline, including those never sent.
    pub unacked: usize,
    /// Failed connection attempts and dropped connections.
    pub reconnects: usize,
    /// Acks that said `duplicate: true` (resends the server had already stored).
    pub duplicate_acks: usize,
    /// A client_id acked with two different seqs.
    pub ack_conflicts: usize,
    /// Messages seen with a seq at or below one already seen.
    pub out_of_order: usize,
    /// Seqs skipped in the client's view.
    pub view_gaps: u64,
    /// Messages seen (history + live).
    pub seen: usize,
    /// Fresh `latest` histories after the first (the server told the client to reload).
    pub view_resets: usize,
}

/// The report of a run.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// The id naming this run's rooms, users and client_ids.
    pub run_id: String,
    /// The rooms the clients were spread over.
    pub rooms: Vec<String>,
    /// How many clients ran.
    pub clients: usize,
    /// Seconds from the clients' start (after sign-ups) until the last one finished.
    pub seconds: f64,
    /// Every client's report, merged.
    pub totals: ClientReport,
}

fn merge(reports: Vec<ClientReport>) -> ClientReport {
    let mut total = ClientReport::default();
    for r in reports {
        total.acked.extend(r.acked);
        total.sent += r.sent;
        total.unacked += r.unacked;
        total.reconnects += r.reconnects;
        total.duplicate_acks += r.duplicate_acks;
        total.ack_conflicts += r.ack_conflicts;
        total.out_of_order += r.out_of_order;
        total.view_gaps += r.view_gaps;
        total.seen += r.seen;
        total.view_resets += r.view_resets;
    }
    total
}

/// Registers (or finds) `name` and logs in. A 503 (overload or an outage) is retried
/// after its `Retry-After`, and a request the gateway never answered (it died, or is
/// restarting) after a second, for up to five minutes, as docs/PROTOCOL.md asks clients to.
/// A register whose answer was lost is retried too: its 409 then means it had worked.
async fn sign_up(base: &str, name: &str) -> Result<String> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let credentials = serde_json::json!({ "username": name, "password": "load-password" });
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let post = |path: &'static str| {
        let (http, credentials) = (http.clone(), credentials.clone());
        async move {
            loop {
                let retry_after = match http.post(format!("{base}{path}")).json(&credentials).send().await {
                    Ok(response) if response.status() != 503 => return anyhow::Ok(response),
                    Ok(response) if std::time::Instant::now() > deadline => return Ok(response),
                    Ok(response) => {
                        response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1)
                    }
                    Err(error) if std::time::Instant::now() > deadline => return Err(error.into()),
                    Err(error) => {
                        eprintln!("{path} for {name}: {error}; retrying");
                        1
                    }
                };
                tokio::time::sleep(Duration::from_secs(retry_after)).await;
            }
        }
    };
    let registered = post("/api/register").await?;
    if registered.status() != 201 && registered.status() != 409 {
        bail!("register {name}: {}", registered.status());
    }
    let login = post("/api/login").await?;
    if login.status() != 200 {
        bail!("login {name}: {}", login.status());
    }
    let login: serde_json::Value = login.json().await?;
    Ok(login["token"].as_str().context("login returned no token")?.to_owned())
}

async fn run(args: RunArgs) -> Result<()> {
    let run_id = args.run_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned());
    let rooms: Vec<String> = (0..args.rooms.max(1)).map(|k| format!("load-{run_id}-{k}")).collect();
    eprintln!(
        "run {run_id}: {} clients, {} rooms, {} messages each at {}/s",
        args.clients,
        rooms.len(),
        args.messages,
        args.rate
    );

    let mut tokens = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let base = &args.url[i % args.url.len()];
        tokens.push(sign_up(base, &format!("ld{run_id}{i}")).await?);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let config = client::ClientConfig {
                index: i,
                run_id: run_id.clone(),
                room: rooms[i % rooms.len()].clone(),
                urls: args.url.clone(),
                token,
                messages: args.messages,
                interval: Duration::from_secs_f64(1.0 / args.rate.max(0.01)),
                body_bytes: args.body_bytes,
                deadline,
            };
            tokio::spawn(client::run(config))
        })
        .collect();
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(task.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let totals = merge(reports);
    eprintln!(
        "sent {} acked {} unacked {} in {seconds:.1}s ({:.0} msg/s); reconnects {}, duplicate acks {}",
        totals.sent,
        totals.acked.len(),
        totals.unacked,
        totals.acked.len() as f64 / seconds,
        totals.reconnects,
        totals.duplicate_acks
    );
    let report = Report { run_id, rooms, clients: args.clients, seconds, totals };
    std::fs::write(&args.out, serde_json::to_vec(&report)?).with_context(|| format!("write {}", args.out))?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse() {
        Cli::Run(args) => run(args).await,
        Cli::Verify(args) => verify::run(args).await,
    }
}
