//! `huddle-persister`: the service that copies Redis room logs into PostgreSQL, and its
//! `dead-letters` operator command.

use clap::Parser;
use huddle_persister::{Command, DeadLetterAction};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    huddle_failpoints::setup();
    let mut settings = huddle_persister::Settings::parse();
    if let Some(Command::DeadLetters { action }) = settings.command.take() {
        return dead_letters(&settings, action).await;
    }
    let telemetry = huddle_telemetry::init("persister");
    let persister = huddle_persister::start(settings).await?;
    huddle_telemetry::shutdown_signal().await;
    persister.stop().await;
    tracing::info!("persister stopped");
    telemetry.shutdown().await;
    Ok(())
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
