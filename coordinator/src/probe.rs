//! Whether a process listens at a node's address: the one proof the
//! coordinator accepts that a node is gone before its registration expires
//! (the silence rule of [`crate::control`], the clients' reports of
//! [`crate::suspects`] and the leader's [`crate::links`] all use it).

use std::time::Duration;

/// How long a connection probe may take; a timeout proves nothing.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// The host and port of a node's WebSocket URL (`ws` on 80 and `wss` on 443
/// unless it names a port; an IPv6 host without its brackets).
pub fn address(url: &str) -> Option<(String, u16)> {
    let uri = url.parse::<http::Uri>().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("wss") { 443 } else { 80 });
    Some((host, port))
}

/// Whether the host and port of a node's URL refuse a TCP connection (no
/// process listens there). Anything else (a timeout, an unreachable
/// network, a URL without a host) is no proof.
pub async fn refuses(url: &str) -> bool {
    let Some(addr) = address(url) else { return false };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_url_gives_its_host_and_port() {
        assert_eq!(address("ws://10.0.0.5:9000/socket"), Some(("10.0.0.5".into(), 9000)));
        assert_eq!(address("wss://n.example/socket"), Some(("n.example".into(), 443)));
        assert_eq!(address("ws://[::1]/socket"), Some(("::1".into(), 80)));
        assert_eq!(address("not a url"), None);
    }

    #[tokio::test]
    async fn only_a_refused_connection_is_proof() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        assert!(refuses(&format!("ws://127.0.0.1:{closed}/socket")).await);
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        assert!(!refuses(&format!("ws://{}/socket", open.local_addr().expect("addr"))).await);
        assert!(!refuses("not a url").await);
    }
}
