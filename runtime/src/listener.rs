//! The listener limits both services take (`#[command(flatten)]`): what
//! bounds the connections strangers open (`docs/security.md`).

use presence_http::Limits;

use crate::config::Problems;

/// A default as clap shows and applies it, read from [`Limits::default`].
fn default_of<T: ToString>(field: impl Fn(&Limits) -> T) -> String {
    field(&Limits::default()).to_string()
}

/// Listener limits as flags with environment fallbacks.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenerArgs {
    /// Request headers must arrive within this, ms; a keep-alive connection idle this long is closed.
    #[arg(long, env = "HEADER_TIMEOUT_MS", default_value_t = default_of(|l| l.header_timeout.as_millis()))]
    pub header_timeout_ms: String,
    /// Largest request head (request line and headers), bytes (at least 8192).
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = default_of(|l| l.max_header_bytes))]
    pub max_header_bytes: String,
    /// Open connections (HTTP and WebSocket) at most.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = default_of(|l| l.max_connections))]
    pub max_connections: String,
    /// Open connections from one client IP at most.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = default_of(|l| l.max_connections_per_ip))]
    pub max_connections_per_ip: String,
}

impl ListenerArgs {
    /// Checks the flags, recording problems in `p`.
    pub fn check(&self, p: &mut Problems) -> Limits {
        let mut l = Limits::default();
        p.read_ms("--header-timeout-ms/HEADER_TIMEOUT_MS", &self.header_timeout_ms, 1, &mut l.header_timeout);
        p.read_min("--max-header-bytes/MAX_HEADER_BYTES", &self.max_header_bytes, 8192, &mut l.max_header_bytes);
        p.read_min("--max-connections/MAX_CONNECTIONS", &self.max_connections, 1, &mut l.max_connections);
        let per_ip = "--max-connections-per-ip/MAX_CONNECTIONS_PER_IP";
        p.read_min(per_ip, &self.max_connections_per_ip, 1, &mut l.max_connections_per_ip);
        l
    }
}
