//! `huddle-hydrator`: the service that restores rooms from PostgreSQL into Redis, and its
//! `rewarm` operator command.

use std::time::Duration;

use huddle_hydrator::Command;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    huddle_failpoints::setup();
    let mut settings = huddle_config::parse::<huddle_hydrator::Settings>();
    let telemetry = huddle_telemetry::init("hydrator")?;
    if let Some(Command::Rewarm { active_within_mins }) = settings.command.take() {
        let archive = huddle_archive::Archive::connect(&settings.postgres)?;
        let broker = huddle_broker::Broker::connect(&settings.broker).await?;
        let queued =
            huddle_hydrator::queue_rewarm(&archive, &broker, Duration::from_secs(active_within_mins * 60)).await?;
        broker.close().await;
        println!("queued {queued} room(s) for re-warming");
        telemetry.shutdown().await;
        return Ok(());
    }
    let hydrator = huddle_hydrator::start(settings).await?;
    let failed = huddle_worker::until_stopped_or_failed(&hydrator).await;
    hydrator.stop().await;
    tracing::info!("hydrator stopped");
    telemetry.shutdown().await;
    failed.map_or(Ok(()), |reason| Err(anyhow::anyhow!(reason)))
}
