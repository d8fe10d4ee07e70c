//! `huddle-persister`: the service that copies Redis room logs into PostgreSQL, and its
//! `dead-letters` operator command.

use huddle_persister::{Command, DeadLetterAction};

fn main() -> anyhow::Result<()> {
    huddle_failpoints::setup();
    let mut settings = huddle_config::parse::<huddle_persister::Settings>();
    // Before the runtime starts, so that every thread it starts inherits the priority.
    lower_cpu_priority(settings.cpu_nice);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
        if let Some(Command::DeadLetters { action }) = settings.command.take() {
            return dead_letters(&settings, action).await;
        }
        run(settings).await
    })
}

/// Copying to PostgreSQL can wait; a send and its deliveries cannot. Where the persister
/// shares cores with a gateway or Redis, its bursts (a sweep's worth of chunks at once)
/// yield to them instead of holding up their replies for a scheduler slice.
#[allow(unsafe_code)] // setpriority has no safe wrapper in std
fn lower_cpu_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: setpriority only changes this thread's scheduling priority (on Linux, nice
    // is per thread; threads started later inherit it).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        eprintln!("setpriority({nice}) failed: {}; running at normal priority", std::io::Error::last_os_error());
    }
}

async fn run(settings: huddle_persister::Settings) -> anyhow::Result<()> {
    let telemetry = huddle_telemetry::init("persister")?;
    let persister = huddle_persister::start(settings).await?;
    let failed = huddle_worker::until_stopped_or_failed(&persister).await;
    persister.stop().await;
    tracing::info!("persister stopped");
    telemetry.shutdown().await;
    failed.map_or(Ok(()), |reason| Err(anyhow::anyhow!(reason)))
}

async fn dead_letters(settings: &huddle_persister::Settings, action: DeadLetterAction) -> anyhow::Result<()> {
    let broker = huddle_broker::Broker::connect(&settings.broker).await?;
    match action {
        DeadLetterAction::List { limit } => {
            let dead = broker.dead_letters(limit).await?;
            println!("{} dead-lettered task(s) in {}", dead.len(), broker.topology().dead_letter_queue());
            for task in dead {
                println!("queue={} reason={} bytes={}", task.queue, task.reason, task.size);
            }
        }
        DeadLetterAction::Redrive { limit } => {
            let moved = broker.redrive_dead_letters(limit).await?;
            println!("re-drove {moved} task(s)");
        }
    }
    broker.close().await;
    Ok(())
}
