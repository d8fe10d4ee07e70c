//! Typed settings shared by the Huddle services, read from flags or `HUDDLE_*` environment
//! variables (12-factor). Defaults point at the local PostgreSQL, Redis and RabbitMQ, so a
//! developer machine needs no configuration at all.
//!
//! Each service's binary flattens the groups it needs into its own `clap::Parser`.
//!
//! It holds settings only: it connects to nothing and knows no service's behaviour.

use std::fmt::Display;
use std::str::FromStr;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

/// Parses a count, size or duration that 0 would make meaningless (a pool of no
/// connections, a deadline already past, a burst of nothing): clap applies it to the
/// flag and to its environment variable alike, so a 0 stops the service at start.
pub fn at_least_one<T>(value: &str) -> Result<T, String>
where
    T: FromStr + Default + PartialEq,
    T::Err: Display,
{
    match value.trim().parse::<T>() {
        Ok(zero) if zero == T::default() => Err("must be at least 1".into()),
        Ok(parsed) => Ok(parsed),
        Err(error) => Err(error.to_string()),
    }
}

/// The highest rate a limit takes (per second or per minute): above it a token bucket's
/// refill interval rounds to nothing.
pub const MAX_RATE: f64 = 1e9;

/// Parses a rate limit: a finite number above 0 and at most [`MAX_RATE`] (0 or a
/// negative rate would refuse everything, NaN and infinity nothing).
pub fn rate(value: &str) -> Result<f64, String> {
    let parsed: f64 = value.trim().parse().map_err(|error: std::num::ParseFloatError| error.to_string())?;
    if parsed.is_finite() && parsed > 0.0 && parsed <= MAX_RATE {
        Ok(parsed)
    } else {
        Err(format!("must be a number above 0 and at most {MAX_RATE}"))
    }
}

/// Parses a URL list setting (`scheme://host…`, comma-separated) whose every entry must
/// use one of `schemes`; the value is kept as given.
fn url_list(value: &str, schemes: &[&str]) -> Result<String, String> {
    let entries: Vec<&str> = value.split(',').map(str::trim).filter(|entry| !entry.is_empty()).collect();
    if entries.is_empty() {
        return Err("no URL given".into());
    }
    for entry in entries {
        let host =
            schemes.iter().find_map(|scheme| entry.strip_prefix(scheme).and_then(|rest| rest.strip_prefix("://")));
        match host {
            Some(rest) if !rest.is_empty() && !rest.starts_with(['/', ':']) => {}
            _ => return Err(format!("'{entry}' is not a URL with a host and the scheme {}", schemes.join(" or "))),
        }
    }
    Ok(value.to_owned())
}

/// Parses `HUDDLE_AMQP_URL`: one or more `amqp://` or `amqps://` URLs.
pub fn amqp_urls(value: &str) -> Result<String, String> {
    url_list(value, &["amqp", "amqps"])
}

/// Parses the URL of a gRPC service: one `http://` or `https://` URL.
pub fn grpc_url(value: &str) -> Result<String, String> {
    if value.contains(',') {
        return Err("one URL only".into());
    }
    url_list(value, &["http", "https"])
}

/// Parses the command line and the environment into `T`, as `T::parse()` does, except
/// that a value refused from an environment variable is reported by the variable's name:
/// an operator who set `HUDDLE_SEND_BURST=0` in a manifest is told about that, not about a
/// `--send-burst` flag nobody typed. Exits with clap's code 2 on any refusal.
pub fn parse<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(settings) => settings,
        Err(error) => {
            let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
            naming_the_variable(error, &T::command(), &args, |name| std::env::var_os(name)).exit()
        }
    }
}

/// `error` with its flag named by the variable it came from, when it came from one: the
/// refused argument has an environment variable, `lookup` finds it set, and `args` do not
/// give the flag.
fn naming_the_variable(
    error: clap::Error,
    command: &clap::Command,
    args: &[std::ffi::OsString],
    lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(error.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return error;
    }
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else { return error };
    let Some(long) = shown.split_whitespace().next().and_then(|flag| flag.strip_prefix("--")) else { return error };
    let Some(variable) = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .and_then(|variable| variable.to_str())
    else {
        return error;
    };
    let flag = format!("--{long}");
    let on_the_command_line = args
        .iter()
        .filter_map(|arg| arg.to_str())
        .any(|arg| arg == flag || arg.strip_prefix(flag.as_str()).is_some_and(|rest| rest.starts_with('=')));
    if on_the_command_line || lookup(variable).is_none() {
        return error;
    }
    let rendered = error.render().to_string();
    let message = rendered.strip_prefix("error: ").unwrap_or(&rendered);
    let message =
        message.replacen(&format!("'{shown}'"), &format!("{variable} (the environment variable of {flag})"), 1);
    clap::Error::raw(error.kind(), message).with_cmd(command)
}

/// Where the PostgreSQL archive lives.
#[derive(Debug, Clone, Args)]
pub struct PostgresSettings {
    /// PostgreSQL connection URL.
    #[arg(long, env = "HUDDLE_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/huddle")]
    pub database_url: String,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "HUDDLE_DATABASE_POOL_SIZE", default_value_t = 16, value_parser = at_least_one::<usize>)]
    pub database_pool_size: usize,
    /// Deadline of every PostgreSQL wait, in ms: for a pooled connection, for a new
    /// connection, and for one statement (`statement_timeout`).
    #[arg(long, env = "HUDDLE_DATABASE_TIMEOUT_MS", default_value_t = 10_000, value_parser = at_least_one::<u64>)]
    pub database_timeout_ms: u64,
}

/// Where the Redis hot log lives, and how it is laid out.
#[derive(Debug, Clone, Args)]
pub struct RedisSettings {
    /// Redis connection URL; in cluster mode, the URLs of some of the cluster's nodes,
    /// separated by commas (the rest of the cluster is discovered from them).
    #[arg(long, env = "HUDDLE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// `single`: one Redis (with or without replicas behind it); `cluster`: Redis Cluster,
    /// where each room's keys live in the hash slot of its name.
    #[arg(long, env = "HUDDLE_REDIS_MODE", value_enum, default_value_t = RedisMode::Single)]
    pub redis_mode: RedisMode,
    /// In cluster mode, carry live messages by sharded pub/sub (`SPUBLISH`, Redis 7.0 or
    /// later: each message goes only to the shard that owns its room). `false` falls back to
    /// `PUBLISH`, which the cluster relays to every node.
    #[arg(long, env = "HUDDLE_REDIS_SHARDED_PUBSUB", default_value_t = true, action = clap::ArgAction::Set)]
    pub redis_sharded_pubsub: bool,
    /// Replicas that must hold a message before it is acked (`WAIT` after each append); 0
    /// acks at once. With replicas and failover, an acked message the primary had not yet
    /// streamed to a replica is lost when that replica takes over: this closes that window.
    #[arg(long, env = "HUDDLE_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// How long an append waits for those replicas, in ms; a send they do not confirm in
    /// time is refused as `unavailable` (its resend with the same client_id is deduplicated).
    #[arg(long, env = "HUDDLE_REDIS_WAIT_TIMEOUT_MS", default_value_t = 500, value_parser = at_least_one::<u64>)]
    pub redis_wait_timeout_ms: u64,
    /// Connections in the Redis pool (pub/sub uses one more, dedicated connection).
    #[arg(long, env = "HUDDLE_REDIS_POOL_SIZE", default_value_t = 32, value_parser = at_least_one::<usize>)]
    pub redis_pool_size: usize,
    /// Prefix of every Redis key and channel, so deployments and test runs can share a Redis.
    #[arg(long, env = "HUDDLE_KEY_PREFIX", default_value = "huddle:")]
    pub key_prefix: String,
    /// Messages Redis keeps per room once they are persisted (entries above the persisted
    /// watermark are never trimmed, whatever this says).
    #[arg(long, env = "HUDDLE_REDIS_WINDOW", default_value_t = 2000)]
    pub redis_window: u64,
    /// Deadline of a Redis pool wait (for a pooled or a new connection), in ms.
    #[arg(long, env = "HUDDLE_REDIS_TIMEOUT_MS", default_value_t = 5_000, value_parser = at_least_one::<u64>)]
    pub redis_timeout_ms: u64,
}

/// Which kind of Redis deployment holds the hot log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisMode {
    /// One Redis process (or a primary with replicas and failover behind one address).
    Single,
    /// Redis Cluster: keys and pub/sub channels spread over its shards by hash slot.
    Cluster,
}

impl RedisSettings {
    /// Whether live messages go by sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`).
    pub fn sharded_pubsub(&self) -> bool {
        self.redis_mode == RedisMode::Cluster && self.redis_sharded_pubsub
    }
}

/// Where RabbitMQ lives, and how the task queues are named.
#[derive(Debug, Clone, Args)]
pub struct BrokerSettings {
    /// AMQP URL of RabbitMQ (vhost is the path, `%2f` for `/`); for a cluster, each node's URL,
    /// separated by commas: a lost connection is reopened to the next node that answers.
    #[arg(long, env = "HUDDLE_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f", value_parser = amqp_urls)]
    pub amqp_url: String,
    /// Prefix of every queue and exchange name, so deployments and test runs can share a vhost.
    #[arg(long, env = "HUDDLE_QUEUE_PREFIX", default_value = "huddle")]
    pub queue_prefix: String,
    /// Deliveries of one task before it is dead-lettered as poison.
    #[arg(long, env = "HUDDLE_TASK_DELIVERY_LIMIT", default_value_t = 5, value_parser = at_least_one::<u32>)]
    pub delivery_limit: u32,
    /// Kind of the task queues: `quorum` (replicated over a RabbitMQ cluster's nodes; the
    /// default) or `classic` (one node's queue, for a broker without quorum queues).
    #[arg(long, env = "HUDDLE_QUEUE_TYPE", value_enum, default_value_t = QueueType::Quorum)]
    pub queue_type: QueueType,
    /// Nodes each quorum queue is replicated to when it is first declared
    /// (`x-quorum-initial-group-size`, at least 1); unset: RabbitMQ's own default.
    #[arg(long, env = "HUDDLE_QUORUM_GROUP_SIZE", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub quorum_group_size: Option<u32>,
}

/// Which kind of RabbitMQ queue carries the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    /// Quorum queues: replicated (Raft), and RabbitMQ counts each task's deliveries.
    Quorum,
    /// Classic queues: on one node; Huddle counts each task's deliveries in a header.
    Classic,
}

/// How the services trust each other (every service reads it).
#[derive(Debug, Clone, Args)]
pub struct TrustSettings {
    /// Shared secret every internal gRPC call carries (`authorization: Bearer …`), at
    /// least 32 bytes, the same on every service; required unless `--dev`.
    #[arg(long, env = "HUDDLE_GRPC_TOKEN", hide_env_values = true)]
    pub grpc_token: Option<SecretString>,
    /// Development mode: secrets may be missing or short (the gateway then signs
    /// sessions with a public secret, and gRPC calls go unauthenticated). Never in
    /// production.
    #[arg(long, env = "HUDDLE_DEV", default_value_t = false)]
    pub dev: bool,
}

/// The shortest secret accepted outside dev mode, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

impl TrustSettings {
    /// The gRPC token to send and require: `None` only in dev mode without one.
    pub fn grpc_token(&self) -> Result<Option<SecretString>, String> {
        match (&self.grpc_token, self.dev) {
            (Some(token), _) if token.expose_secret().len() >= MIN_SECRET_BYTES => Ok(Some(token.clone())),
            (token, true) => Ok(token.clone()),
            (Some(_), false) => Err(format!("HUDDLE_GRPC_TOKEN must be at least {MIN_SECRET_BYTES} bytes")),
            (None, false) => Err("HUDDLE_GRPC_TOKEN is not set: set it (at least 32 random bytes, the same on every \
                 service), or pass --dev (HUDDLE_DEV=1) on a development machine"
                .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{amqp_urls, at_least_one, grpc_url, naming_the_variable, rate};

    #[derive(Debug, Parser)]
    struct Probe {
        #[arg(long, env = "PROBE_BURST", default_value_t = 1, value_parser = at_least_one::<u32>)]
        burst: u32,
        #[arg(long, env = "PROBE_MODE", default_value = "single", value_parser = ["single", "cluster"])]
        mode: String,
    }

    /// What a refusal of `--flag value` says, when the environment holds `set`
    /// (`(variable, value)`) and the command line is `args`.
    fn refusal(flag: &str, value: &str, args: &[&str], set: Option<(&str, &str)>) -> String {
        let error = Probe::try_parse_from(["probe", flag, value]).expect_err("the value was accepted");
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let lookup = |name: &str| set.filter(|(variable, _)| *variable == name).map(|(_, value)| value.into());
        naming_the_variable(error, &Probe::command(), &args, lookup).render().to_string()
    }

    #[test]
    fn a_value_refused_from_the_environment_is_reported_by_its_variable() {
        let said = refusal("--burst", "0", &["probe"], Some(("PROBE_BURST", "0")));
        assert!(said.contains("PROBE_BURST (the environment variable of --burst)"), "{said}");
        assert!(said.contains("must be at least 1") && said.contains("'0'"), "{said}");
        let said = refusal("--mode", "ring", &["probe"], Some(("PROBE_MODE", "ring")));
        assert!(said.contains("PROBE_MODE (the environment variable of --mode)"), "{said}");
        assert!(said.contains("possible values"), "{said}");
    }

    #[test]
    fn a_value_refused_from_the_command_line_is_reported_by_its_flag() {
        for args in [&["probe", "--burst", "0"][..], &["probe", "--burst=0"][..]] {
            let said = refusal("--burst", "0", args, Some(("PROBE_BURST", "3")));
            assert!(said.contains("'--burst <BURST>'") && !said.contains("PROBE_BURST"), "{args:?}: {said}");
        }
        let said = refusal("--burst", "0", &["probe", "--burst", "0"], None);
        assert!(said.contains("'--burst <BURST>'"), "{said}");
    }

    #[test]
    fn counts_and_durations_start_at_one() {
        assert_eq!(at_least_one::<u64>("0"), Err("must be at least 1".into()));
        assert_eq!(at_least_one::<usize>("1"), Ok(1));
        assert!(at_least_one::<u32>("-1").is_err());
        assert!(at_least_one::<u32>("ten").is_err());
    }

    #[test]
    fn a_rate_is_finite_and_above_zero() {
        assert_eq!(rate("20"), Ok(20.0));
        assert_eq!(rate("0.25"), Ok(0.25));
        for nonsense in ["0", "-1", "NaN", "inf", "1e23", "", "fast"] {
            assert!(rate(nonsense).is_err(), "{nonsense:?} was accepted");
        }
    }

    #[test]
    fn url_settings_take_their_schemes_only() {
        assert!(amqp_urls("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(amqp_urls("amqps://a:5671/v, amqp://b:5672/v,").is_ok());
        for nonsense in ["", "not a url", "http://127.0.0.1:5672", "amqp://", "amqp:///vhost", "amqp://a/v,ftp://b"] {
            assert!(amqp_urls(nonsense).is_err(), "{nonsense:?} was accepted");
        }
        assert!(grpc_url("http://127.0.0.1:50051").is_ok());
        assert!(grpc_url("https://hydrator.huddle.svc:50051").is_ok());
        for nonsense in ["127.0.0.1:50051", "ftp://127.0.0.1:50051", "http://a:1,http://b:1", "http://"] {
            assert!(grpc_url(nonsense).is_err(), "{nonsense:?} was accepted");
        }
    }
}
