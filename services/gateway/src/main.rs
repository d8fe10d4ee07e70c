//! `huddle-gateway`: the binary browsers connect to (REST, WebSockets, the web client).

/// Large blocks (an argon2 hash takes ~19 MiB) always come from and go back to the
/// kernel. glibc's default raises its mmap threshold after the first such block is
/// freed, after which every later one stays in some thread's arena: a burst of sign-ups
/// then left the gateway hundreds of MiB larger for good.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // glibc's allocator tuning has no safe interface
fn return_large_blocks_to_the_kernel() {
    // SAFETY: mallopt only changes allocator tuning; called before other threads start.
    let applied = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    if applied != 1 {
        eprintln!("mallopt(M_MMAP_THRESHOLD) was refused; large blocks may stay in the heap");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_blocks_to_the_kernel() {}

fn main() -> anyhow::Result<()> {
    return_large_blocks_to_the_kernel();
    huddle_failpoints::setup();
    actix_web::rt::System::new().block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let settings = huddle_config::parse::<huddle_gateway::Settings>();
    let telemetry = huddle_telemetry::init("gateway")?;
    let gateway = huddle_gateway::start(settings).await?;
    tracing::info!(url = %format!("http://{}", gateway.addr()), "open this URL in a browser");
    huddle_telemetry::shutdown_signal().await;
    gateway.stop().await;
    tracing::info!("gateway stopped");
    telemetry.shutdown().await;
    Ok(())
}
