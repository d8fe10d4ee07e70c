//! `huddle-bench`: the benchmark load generator (see docs/BENCHMARKS.md and
//! `scripts/bench`, which starts the servers and runs it).
//!
//! * `huddle-bench fanout …`: the fan-out sweep against Huddle, Socket.IO or Django
//!   Channels; one JSON line per step.
//! * `huddle-bench join …`: join latency (a cold burst, then warm joins) against Huddle.
//! * `huddle-bench redis-append …`: the raw rate of Huddle's append script, called
//!   straight from Rust: the baseline a send cannot beat.
//! * `huddle-bench persist …`: the persister through a backlog in Redis, against one raw
//!   binary `COPY` of the same rows (the baseline).
//! * `huddle-bench connections …`: idle sockets up to the server's open-file limit, and
//!   its memory per socket (starts `connections-worker` copies of itself).
//! * `huddle-bench trivial-server --port P`: an in-memory fan-out server speaking
//!   Huddle's frames, the generator's own ceiling.
//! * `huddle-bench plot --input results.jsonl --out plot.svg`: latency against
//!   throughput, one line per server.

mod connections;
mod cpu;
mod fanout;
mod join;
mod persist;
mod plot;
mod redis_append;
mod target;
mod trivial;

use anyhow::Result;
use clap::Parser;

/// Huddle's room log on the bench's Redis, under the run's key prefix.
pub(crate) fn room_log(redis_url: &str, key_prefix: &str, pool_size: usize) -> Result<huddle_roomlog::RoomLog> {
    Ok(huddle_roomlog::RoomLog::connect(&huddle_config::RedisSettings {
        redis_url: redis_url.to_owned(),
        redis_pool_size: pool_size,
        key_prefix: key_prefix.to_owned(),
        redis_window: 2000,
        redis_timeout_ms: 5_000,
        redis_mode: huddle_config::RedisMode::Single,
        redis_sharded_pubsub: true,
        redis_wait_replicas: 0,
        redis_wait_timeout_ms: 500,
    })?)
}

/// Appends `value` as one JSON line to `path`, if a path was given (`--out`).
pub(crate) fn append_json_line(path: Option<&str>, value: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let Some(path) = path else { return Ok(()) };
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{}", serde_json::to_string(value)?)?;
    Ok(())
}

#[derive(Parser)]
#[command(name = "huddle-bench", about = "Huddle benchmark load generator")]
enum Cli {
    /// Fan-out sweep: step the delivery rate up until p99 or delivery fails.
    Fanout(fanout::FanoutArgs),
    /// Join latency: a burst of cold joins, then warm joins one at a time (Huddle).
    Join(join::JoinArgs),
    /// The append script's raw rate, with no gateway around it.
    RedisAppend(redis_append::RedisAppendArgs),
    /// The persister through a backlog, against a raw binary COPY of the same rows.
    Persist(persist::PersistArgs),
    /// Idle sockets up to the server's open-file limit, and its memory per socket.
    Connections(connections::ConnectionsArgs),
    /// One generator process of `connections` (its plan on stdin).
    #[command(hide = true)]
    ConnectionsWorker,
    /// A trivial in-memory fan-out server with Huddle's frames: the generator's ceiling.
    TrivialServer(trivial::TrivialArgs),
    /// Plot fan-out results as SVG.
    Plot {
        /// JSON lines written by `fanout --out`.
        #[arg(long)]
        input: String,
        /// Where to write the SVG.
        #[arg(long)]
        out: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse() {
        Cli::Fanout(args) => {
            let results = fanout::sweep(args).await?;
            anyhow::ensure!(!results.is_empty(), "no step ran");
        }
        Cli::Join(args) => {
            join::run(args).await?;
        }
        Cli::RedisAppend(args) => {
            redis_append::run(args).await?;
        }
        Cli::Persist(args) => {
            persist::run(args).await?;
        }
        Cli::Connections(args) => {
            connections::run(args).await?;
        }
        Cli::ConnectionsWorker => connections::worker().await?,
        Cli::TrivialServer(args) => trivial::serve(args).await?,
        Cli::Plot { input, out } => std::fs::write(out, plot::svg(&std::fs::read_to_string(input)?)?)?,
    }
    Ok(())
}
