use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = huddle_persister::Settings::parse();
    huddle_telemetry::init("persister");
    let persister = huddle_persister::start(settings).await?;
    huddle_telemetry::shutdown_signal().await;
    persister.stop().await;
    tracing::info!("persister stopped");
    Ok(())
}
