//! The node's HTTP routes: `GET /socket` (the WebSocket upgrade, with the
//! token checked before upgrading when the request carries one), `/healthz`,
//! `/readyz` and `/metrics`.

use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use hyper_util::rt::TokioIo;
use presence_http::{error, json, metrics_response, not_found, query_param, Request, Response};
use presence_model::wire::code;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::{session, Node};

/// Routes one request.
pub async fn handle(node: Arc<Node>, req: Request) -> Response {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/socket") => upgrade(node, req),
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(&node),
        (&Method::GET, "/metrics") => {
            node.metrics.observe_bus(&node.bus.stats());
            metrics_response(&node.metrics.registry)
        }
        (_, "/socket" | "/healthz" | "/readyz" | "/metrics") => presence_http::method_not_allowed(),
        _ => not_found(),
    }
}

fn readyz(node: &Node) -> Response {
    let reason = if node.table.get().is_none() {
        Some("no routing table yet")
    } else if !node.store_ok() {
        Some("store unreachable")
    } else if node.is_draining() {
        Some("draining")
    } else if node.membership.is_fenced() {
        Some("fenced: registration lapsed")
    } else {
        None
    };
    presence_http::readiness(
        reason,
        serde_json::json!({
            "nodeId": node.config.node_id,
            "epoch": node.table.epoch(),
            "generation": node.table.version().map(|v| v.generation),
            "tableStale": node.table.is_stale(),
            "store": node.store.kind(),
            "storeReachable": node.store_ok(),
            "bus": node.bus.kind(),
            "busReachable": node.bus.stats().healthy,
            "pendingWrites": node.pending.len(),
        }),
    )
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// The token of the upgrade request: `Authorization: Bearer` first, then
/// `?token=` (a query token that is not UTF-8 is no token at all: refused).
fn request_token(req: &Request) -> Result<Option<String>, presence_http::NotUtf8> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string());
    match bearer {
        Some(t) => Ok(Some(t)),
        None => query_param(req.uri().query(), "token"),
    }
}

/// The session task: waits for hyper to hand over the socket, then runs the
/// session on it. Everything it holds lives as long as the connection, so it
/// holds little (see [`session::run`]).
#[allow(clippy::manual_async_fn)] // see `session::run`: an `async fn` would hold its arguments twice
fn upgraded(
    node: Arc<Node>,
    upgrade: hyper::upgrade::OnUpgrade,
    slot: Option<Arc<presence_http::Slot>>,
    start: Box<session::Start>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let _slot = slot;
        match upgrade.await {
            Ok(io) => {
                let config = node.config.websocket();
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config)).await;
                session::run(node, ws, start).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade did not complete"),
        }
    }
}

fn upgrade(node: Arc<Node>, req: Request) -> Response {
    let headers = req.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let is_ws = header_has(headers, header::UPGRADE, "websocket")
        && header_has(headers, header::CONNECTION, "upgrade")
        && headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let Some(key) = key.filter(|_| is_ws) else {
        let mut res = error(
            StatusCode::UPGRADE_REQUIRED,
            code::UPGRADE_REQUIRED,
            "GET /socket expects a WebSocket upgrade (version 13)",
        );
        res.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return res;
    };
    if node.is_draining() || node.membership.is_fenced() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            code::UNAVAILABLE,
            "node is draining or lost its registration; ask the coordinator for the route",
        );
    }
    // `?device=`: what the connection declares, unless its token says otherwise.
    let device = match query_param(req.uri().query(), "device") {
        Ok(None) => None,
        Ok(Some(d)) => match presence_model::Device::parse(&d) {
            Ok(d) => Some(d),
            Err(e) => return error(StatusCode::BAD_REQUEST, code::BAD_REQUEST, &format!("device: {e}")),
        },
        Err(e) => return error(StatusCode::BAD_REQUEST, code::BAD_REQUEST, &e.to_string()),
    };
    let pre_auth = match request_token(&req) {
        Ok(None) => None,
        Ok(Some(token)) => match node.verifier.verify_identity(&token) {
            Ok(identity) => Some(identity),
            Err(e) => {
                node.metrics.auth_failures.with_label_values(&[e.reason()]).inc();
                return error(StatusCode::UNAUTHORIZED, e.code(), &e.to_string());
            }
        },
        Err(e) => {
            node.metrics.auth_failures.with_label_values(&["malformed"]).inc();
            return error(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED, &e.to_string());
        }
    };
    // Without a token on the request, the connection waits for `auth`: a
    // stranger's connection until then, so their number is capped.
    let waiting = match pre_auth {
        Some(_) => None,
        None => match node.wait_for_auth() {
            Some(place) => Some(place),
            None => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code::TOO_MANY_PENDING,
                    "too many connections wait for authentication; send the token with the upgrade or retry",
                )
            }
        },
    };
    // The connection's place under the listener's caps stays taken while the socket lives.
    let slot = req.extensions().get::<std::sync::Arc<presence_http::Slot>>().cloned();
    let accept = derive_accept_key(key.as_bytes());
    // The request is dropped here: the session task keeps only what it needs.
    let upgrade = hyper::upgrade::on(req);
    let start = Box::new(session::Start { pre_auth, waiting, device });
    node.clone().spawn_session(upgraded(node, upgrade, slot, start));
    let mut res = Response::new(presence_http::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}
