//! `coordinator`: see `coordinator --help`.

use clap::Parser;
use presence_coordinator::args::Args;
use presence_coordinator::Coordinator;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    presence_runtime::logging::init("info");
    let settings = Args::parse().settings().unwrap_or_else(|e| e.exit());
    let (backends, public) = presence_runtime::backends::connect_and_bind(&settings.backends, settings.listen).await;
    let admin = presence_runtime::backends::bind_or_exit(settings.admin);
    tracing::info!(
        id = %settings.coordinator.id,
        addr = %settings.listen,
        admin = %settings.admin,
        admin_key = settings.coordinator.admin_key.is_some(),
        "coordinator starting"
    );
    let coord = Coordinator::new(settings.coordinator, backends.store, backends.bus);
    let stop = CancellationToken::new();
    presence_runtime::signal::on_shutdown_signal(stop.clone());
    presence_coordinator::run(presence_coordinator::Listeners { public, admin }, coord, stop).await;
}
