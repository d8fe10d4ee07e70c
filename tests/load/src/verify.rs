//! Compares what clients saw acked with what PostgreSQL holds.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::Report;

/// Checker parameters.
#[derive(Parser, Clone, Debug)]
pub struct VerifyArgs {
    /// PostgreSQL URL of the system under test.
    #[arg(long, env = "HUDDLE_DATABASE_URL")]
    pub database_url: String,
    /// Report written by `huddle-load run`.
    #[arg(long, default_value = "load-report.json")]
    pub report: String,
    /// Wait up to this long for the persister to catch up before judging.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
    /// Acked messages allowed to be missing (a Redis loss without AOF loses some).
    #[arg(long, default_value_t = 0)]
    pub max_lost: usize,
}

/// The accounting.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub acked: usize,
    pub persisted: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub seq_gaps: u64,
    /// Acked seqs that PostgreSQL holds for a different message (reused after a loss).
    pub reassigned: usize,
}

async fn judge(db: &tokio_postgres::Client, report: &Report) -> Result<Verdict> {
    let rows = db
        .query(
            "SELECT r.name, m.seq, m.client_id FROM messages m JOIN rooms r ON r.id = m.room_id WHERE r.name = ANY($1)",
            &[&report.rooms],
        )
        .await?;
    let mut stored: HashMap<(String, u64), String> = HashMap::new();
    let mut copies: HashMap<(String, String), usize> = HashMap::new();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for row in &rows {
        let (room, seq, client_id): (String, i64, String) = (row.get(0), row.get(1), row.get(2));
        stored.insert((room.clone(), seq as u64), client_id.clone());
        seqs.entry(room.clone()).or_default().push(seq as u64);
        if !client_id.is_empty() {
            *copies.entry((room, client_id)).or_default() += 1;
        }
    }
    let mut verdict = Verdict { acked: report.totals.acked.len(), ..Verdict::default() };
    for acked in &report.totals.acked {
        match stored.get(&(acked.room.clone(), acked.seq)) {
            Some(client_id) if *client_id == acked.client_id => verdict.persisted += 1,
            Some(_) => {
                verdict.lost += 1;
                verdict.reassigned += 1;
            }
            None => verdict.lost += 1,
        }
    }
    verdict.duplicated = copies.values().filter(|&&n| n > 1).map(|n| n - 1).sum();
    for seqs in seqs.values() {
        let present: HashSet<u64> = seqs.iter().copied().collect();
        let max = seqs.iter().copied().max().unwrap_or(0);
        verdict.seq_gaps += (1..=max).filter(|s| !present.contains(s)).count() as u64;
    }
    Ok(verdict)
}

/// Waits for persistence to settle, prints the accounting, fails if a guarantee broke.
pub async fn run(args: VerifyArgs) -> Result<()> {
    let report: Report =
        serde_json::from_slice(&std::fs::read(&args.report).with_context(|| format!("read {}", args.report))?)?;
    let (db, connection) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    // Persistence is eventual: wait until nothing is missing, or (when some loss is
    // expected) until PostgreSQL stops changing for a few seconds.
    let mut verdict = judge(&db, &report).await?;
    let mut unchanged = 0;
    while verdict.lost > 0 && unchanged < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let next = judge(&db, &report).await?;
        unchanged = if next == verdict && args.max_lost > 0 { unchanged + 1 } else { 0 };
        verdict = next;
    }
    let totals = &report.totals;
    println!(
        "run {}: {} clients, {} rooms, {:.1} s",
        report.run_id,
        report.clients,
        report.rooms.len(),
        report.seconds
    );
    println!("sent:            {}", totals.sent);
    println!("acked:           {}", verdict.acked);
    println!("persisted:       {}", verdict.persisted);
    println!("lost:            {}", verdict.lost);
    println!("duplicated:      {}", verdict.duplicated);
    println!("out-of-order:    {}", totals.out_of_order);
    println!("seq gaps:        {} (per-room seqs missing in PostgreSQL)", verdict.seq_gaps);
    println!("view gaps:       {} (seqs a client never saw)", totals.view_gaps);
    println!("seq reassigned:  {} (acked seqs reused after Redis lost them)", verdict.reassigned);
    println!("view resets:     {} (clients told to reload their view)", totals.view_resets);
    println!("unacked:         {}", totals.unacked);
    println!("ack conflicts:   {}", totals.ack_conflicts);
    println!("duplicate acks:  {} (resends the server recognised)", totals.duplicate_acks);
    println!("reconnects:      {}", totals.reconnects);
    let allowed_gaps = if args.max_lost > 0 { u64::MAX } else { 0 };
    if verdict.lost > args.max_lost
        || verdict.duplicated > 0
        || totals.ack_conflicts > 0
        || totals.unacked > 0
        || (args.max_lost == 0 && (totals.out_of_order > 0 || totals.view_gaps > 0))
        || verdict.seq_gaps > allowed_gaps
    {
        bail!("delivery guarantees broken (see above)");
    }
    println!("verdict:         ok");
    Ok(())
}
