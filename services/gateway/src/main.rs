use clap::Parser;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let settings = huddle_gateway::Settings::parse();
    let telemetry = huddle_telemetry::init("gateway");
    let gateway = huddle_gateway::start(settings).await?;
    tracing::info!(url = %format!("http://{}", gateway.addr()), "open this URL in a browser");
    huddle_telemetry::shutdown_signal().await;
    gateway.stop().await;
    tracing::info!("gateway stopped");
    telemetry.shutdown().await;
    Ok(())
}
