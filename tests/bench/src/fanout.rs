//! The fan-out scenario: rooms of members where every member sends on an open-loop
//! schedule; each message is delivered to every member of its room (the sender too), and
//! its latency is measured from the time it was *due* to be sent, so a generator or
//! server that falls behind shows up as latency rather than as a lower send rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::cpu::CpuMeter;
use crate::target::{Client, Incoming, Receiver, Target};

/// Fan-out parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// The server under test.
    #[arg(long, value_enum, default_value = "huddle")]
    pub target: Target,
    /// Its base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Rooms.
    #[arg(long, default_value_t = 50)]
    pub rooms: usize,
    /// Members per room; every one of them sends.
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Target deliveries per second of each step (comma-separated); the sweep stops at the
    /// first step that fails.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000,10000,20000,40000,60000,80000,100000")]
    pub rates: Vec<u64>,
    /// Seconds each step sends for.
    #[arg(long, default_value_t = 10)]
    pub step_secs: u64,
    /// A step passes with p99 at most this many milliseconds...
    #[arg(long, default_value_t = 100)]
    pub max_p99_ms: u64,
    /// ...and at least this share of the expected deliveries.
    #[arg(long, default_value_t = 0.99)]
    pub min_delivered: f64,
    /// Process ids of the server under test, whose CPU is measured (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// The core the server is pinned to, whose whole use (kernel included) is measured.
    #[arg(long)]
    pub server_core: Option<usize>,
    /// Names this run's accounts (Huddle), so runs do not collide.
    #[arg(long, default_value = "bench")]
    pub run_id: String,
    /// Where to append one JSON line per step.
    #[arg(long)]
    pub out: Option<String>,
    /// Fail (exit non-zero) unless at least one step passed (the smoke mode's check).
    #[arg(long)]
    pub require_pass: bool,
}

/// What one step measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// The server under test.
    pub target: Target,
    /// `sweep` or `half` (the step at half the best passing rate).
    pub phase: &'static str,
    /// Deliveries per second asked for.
    pub rate: u64,
    /// Messages sent.
    pub sent: u64,
    /// Deliveries expected (sent × members).
    pub expected: u64,
    /// Deliveries seen within the step and its drain time.
    pub delivered: u64,
    /// Sends the server refused (error frames).
    pub refused: u64,
    /// Deliveries per second achieved.
    pub deliveries_per_sec: f64,
    /// Latency percentiles, milliseconds, from the time each send was due.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest delivery.
    pub max_ms: f64,
    /// The generator's CPU, in cores.
    pub generator_cpu: f64,
    /// The server's CPU (all its processes), in cores.
    pub server_cpu: f64,
    /// How busy the server's core was (0 to 1), everything on it counted: its Redis and
    /// the kernel's network work too.
    pub server_core_busy: f64,
    /// Server CPU per delivery, microseconds.
    pub server_us_per_delivery: f64,
    /// The generator used most of its core: the result measures the generator, not the server.
    pub generator_bound: bool,
    /// p99 and delivery share within the limits.
    pub passed: bool,
}

/// How long after a step's end a blocked send is given up.
const SEND_GRACE: Duration = Duration::from_secs(5);

/// Latencies and counts of one receiving client.
struct Tally {
    latencies_us: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    refused: AtomicU64,
}

impl Tally {
    fn new() -> Result<Self> {
        Ok(Self {
            latencies_us: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
            delivered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }
}

/// Clients connected to their rooms, receiving all the time.
pub struct Crowd {
    args: FanoutArgs,
    senders: Vec<Client>,
    tallies: Vec<Arc<Tally>>,
    /// Bodies of other steps are ignored by the receivers.
    step: Arc<AtomicU64>,
    started: Instant,
}

/// The body of a send due at `due` in step `step`: the receiver reads both back.
fn body(step: u64, due_ns: u128, size: usize) -> String {
    let mut body = format!("s{step}t{due_ns}|");
    while body.len() < size {
        body.push('x');
    }
    body
}

fn parse_body(body: &str) -> Option<(u64, u128)> {
    let (head, _) = body.split_once('|')?;
    let (step, due) = head.strip_prefix('s')?.split_once('t')?;
    Some((step.parse().ok()?, due.parse().ok()?))
}

impl Crowd {
    /// Signs up (Huddle) and connects every client, 64 at a time.
    pub async fn connect(args: FanoutArgs) -> Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        let started = Instant::now();
        let step = Arc::new(AtomicU64::new(0));
        let total = args.rooms * args.members;
        let connected: Vec<Result<(Client, Receiver)>> = futures_util::stream::iter(0..total)
            .map(|i| {
                let (http, args) = (http.clone(), args.clone());
                async move {
                    let name = format!("{}-{i}", args.run_id);
                    let token = args.target.account(&http, &args.url, &name).await?;
                    let room = format!("{}-room-{}", args.run_id, i % args.rooms);
                    args.target.connect(&args.url, &room, token.as_deref()).await
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut senders = Vec::with_capacity(total);
        let mut tallies = Vec::with_capacity(total);
        for client in connected {
            let (sender, mut receiver) = client?;
            let tally = Arc::new(Tally::new()?);
            let (tally_of_task, step) = (Arc::clone(&tally), Arc::clone(&step));
            tokio::spawn(async move {
                while let Ok(Some(incoming)) = receiver.next().await {
                    match incoming {
                        Incoming::Delivery(body) => {
                            let Some((of_step, due_ns)) = parse_body(&body) else { continue };
                            if of_step != step.load(Ordering::Relaxed) {
                                continue;
                            }
                            let latency_us = (started.elapsed().as_nanos().saturating_sub(due_ns) / 1000) as u64;
                            tally_of_task.delivered.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut histogram) = tally_of_task.latencies_us.lock() {
                                histogram.saturating_record(latency_us.max(1));
                            }
                        }
                        Incoming::Refusal => {
                            tally_of_task.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Incoming::Other => {}
                    }
                }
            });
            senders.push(sender);
            tallies.push(tally);
        }
        eprintln!("{:?}: {total} clients in {} rooms connected in {:?}", args.target, args.rooms, started.elapsed());
        Ok(Self { args, senders, tallies, step, started })
    }

    /// Runs one step at `rate` deliveries per second.
    pub async fn step(&mut self, phase: &'static str, rate: u64) -> Result<StepResult> {
        let step = self.step.fetch_add(1, Ordering::Relaxed) + 1;
        let (clients, members) = (self.senders.len() as f64, self.args.members as f64);
        let sends_per_sec = rate as f64 / members;
        let interval = Duration::from_secs_f64(clients / sends_per_sec);
        let duration = Duration::from_secs(self.args.step_secs);
        let meters = CpuMeter::start(&self.args.server_pid, self.args.server_core)?;
        let begin = Instant::now() + Duration::from_millis(50);
        let end = begin + duration;
        let body_bytes = self.args.body_bytes;
        let started = self.started;
        let senders = std::mem::take(&mut self.senders);
        let progress = tokio::spawn(progress(self.tallies.clone(), duration));
        let sending = senders.into_iter().enumerate().map(|(i, mut client)| {
            let offset = interval.mul_f64(i as f64 / clients);
            tokio::spawn(async move {
                let mut sent = 0u64;
                let mut due = begin + offset;
                while due < end {
                    tokio::time::sleep_until(due).await;
                    let due_ns = (due - started).as_nanos();
                    // A server that stops reading must not hold the step up forever.
                    let text = body(step, due_ns, body_bytes);
                    let send = client.send(&text);
                    if !matches!(tokio::time::timeout_at(end + SEND_GRACE, send).await, Ok(Ok(()))) {
                        break;
                    }
                    sent += 1;
                    due += interval;
                }
                let _ = client.keep_alive().await;
                (client, sent)
            })
        });
        let mut sent = 0;
        for task in futures_util::future::join_all(sending).await {
            let (client, client_sent) = task.context("a sending task panicked")?;
            sent += client_sent;
            self.senders.push(client);
        }
        let expected = sent * self.args.members as u64;
        // Drain: until everything arrived, or 3 s without progress.
        let mut last = (self.delivered(), Instant::now());
        while last.0 < expected && last.1.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.delivered();
            if now > last.0 {
                last = (now, Instant::now());
            }
        }
        progress.abort();
        let seconds = duration.as_secs_f64();
        let (generator_cpu, server_cpu, server_core_busy) = meters.cores()?;
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
        let (mut delivered, mut refused) = (0, 0);
        for tally in &self.tallies {
            let mut histogram = tally.latencies_us.lock().map_err(|_| anyhow::anyhow!("a receiver panicked"))?;
            latencies.add(&*histogram)?;
            histogram.reset();
            delivered += tally.delivered.swap(0, Ordering::Relaxed);
            refused += tally.refused.swap(0, Ordering::Relaxed);
        }
        let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
        let p99_ms = ms(0.99);
        let deliveries_per_sec = delivered as f64 / seconds;
        let result = StepResult {
            target: self.args.target,
            phase,
            rate,
            sent,
            expected,
            delivered,
            refused,
            deliveries_per_sec,
            p50_ms: ms(0.5),
            p99_ms,
            p999_ms: ms(0.999),
            max_ms: latencies.max() as f64 / 1000.0,
            generator_cpu,
            server_cpu,
            server_core_busy,
            server_us_per_delivery: if delivered == 0 { 0.0 } else { server_cpu * seconds * 1e6 / delivered as f64 },
            generator_bound: generator_cpu > 0.9,
            passed: expected > 0
                && p99_ms <= self.args.max_p99_ms as f64
                && delivered as f64 >= self.args.min_delivered * expected as f64,
        };
        // Settle before the next step.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(result)
    }

    fn delivered(&self) -> u64 {
        self.tallies.iter().map(|t| t.delivered.load(Ordering::Relaxed)).sum()
    }
}

/// Prints deliveries per second once a second while a step runs.
async fn progress(tallies: Vec<Arc<Tally>>, duration: Duration) {
    let mut last = 0;
    for second in 1..=duration.as_secs() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let delivered: u64 = tallies.iter().map(|t| t.delivered.load(Ordering::Relaxed)).sum();
        eprint!("\r  {second:>3} s: {:>8} deliveries/s", delivered - last);
        last = delivered;
    }
    eprintln!();
}

/// Runs the sweep: steps up until one fails, then a step at half the best passing rate.
pub async fn sweep(args: FanoutArgs) -> Result<Vec<StepResult>> {
    let rates = args.rates.clone();
    let mut crowd = Crowd::connect(args).await?;
    let mut results = vec![];
    let mut best = None;
    for rate in rates {
        let result = crowd.step("sweep", rate).await?;
        report(&result, crowd.args.out.as_deref())?;
        let passed = result.passed;
        results.push(result);
        if !passed {
            break;
        }
        best = Some(rate);
    }
    match best {
        Some(best) => {
            let half = crowd.step("half", best / 2).await?;
            report(&half, crowd.args.out.as_deref())?;
            eprintln!(
                "{:?}: best passing step {best} deliveries/s; at half of it p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
                half.target, half.p50_ms, half.p99_ms, half.p999_ms
            );
            results.push(half);
        }
        None if crowd.args.require_pass => anyhow::bail!("{:?}: no step passed", crowd.args.target),
        None => eprintln!("{:?}: no step passed", crowd.args.target),
    }
    Ok(results)
}

fn report(result: &StepResult, out: Option<&str>) -> Result<()> {
    eprintln!(
        "{:?} {} {:>7}/s: sent {} delivered {}/{} ({:.2}%) refused {} | {:.0}/s | p50 {:.2} p99 {:.2} p999 {:.2} max {:.2} ms | cpu server {:.2} (core {:.0}% busy) gen {:.2}{} | {}",
        result.target,
        result.phase,
        result.rate,
        result.sent,
        result.delivered,
        result.expected,
        100.0 * result.delivered as f64 / result.expected.max(1) as f64,
        result.refused,
        result.deliveries_per_sec,
        result.p50_ms,
        result.p99_ms,
        result.p999_ms,
        result.max_ms,
        result.server_cpu,
        100.0 * result.server_core_busy,
        result.generator_cpu,
        if result.generator_bound { " (GENERATOR-BOUND)" } else { "" },
        if result.passed { "pass" } else { "FAIL" },
    );
    crate::append_json_line(out, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_step_and_due_time_and_have_the_asked_size() {
        let b = body(3, 123_456_789, 64);
        assert_eq!(b.len(), 64);
        assert_eq!(parse_body(&b), Some((3, 123_456_789)));
        assert_eq!(parse_body("hello"), None);
    }
}
