//! `ws-node`: see `ws-node --help`.

use clap::Parser;
use presence_ws_node::args::Args;
use presence_ws_node::Node;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    presence_runtime::logging::init("info");
    let settings = Args::parse().settings().unwrap_or_else(|e| e.exit());
    let (backends, listener) = presence_runtime::backends::connect_and_bind(&settings.backends, settings.listen).await;
    let node = Node::start(settings.node, settings.verifier, backends.store, backends.bus).await;
    let signal = CancellationToken::new();
    presence_runtime::signal::on_shutdown_signal(signal.clone());
    let stop = CancellationToken::new();
    let server = tokio::spawn(presence_ws_node::run(listener, node.clone(), stop.clone()));
    signal.cancelled().await;
    // SIGTERM: leave on purpose. Hand every user to its new owner, then stop.
    tracing::info!(node = %node.config.node_id, "draining");
    node.drain().await;
    stop.cancel();
    let _ = server.await;
}
