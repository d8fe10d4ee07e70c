use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = huddle_hydrator::Settings::parse();
    huddle_telemetry::init("hydrator");
    let hydrator = huddle_hydrator::start(settings).await?;
    huddle_telemetry::shutdown_signal().await;
    hydrator.stop().await;
    tracing::info!("hydrator stopped");
    Ok(())
}
