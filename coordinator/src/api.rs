//! The coordinator's HTTP API (SPEC section 4). JSON in camelCase; errors as
//! `{"error","code"}`. `/route` reads only the cached table.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};
use presence_http::{error, json, metrics_response, not_found, query_param, read_body, Request, Response};
use presence_model::api::{NodeView, PresenceView, Route};
use presence_model::wire::code;
use presence_model::{RoutingTable, UserId};
use serde::Deserialize;

use crate::Coordinator;

/// Most user IDs in one batch request.
pub const MAX_BATCH: usize = 1000;
/// Largest request body accepted (a full batch of 128-byte IDs fits).
const MAX_BODY: usize = 256 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Batch {
    user_ids: Vec<UserId>,
}

/// Routes one request, counting it by route and status class.
pub async fn handle(coord: Arc<Coordinator>, req: Request) -> Response {
    let (route, res) = dispatch(&coord, req).await;
    let class = match res.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    coord.metrics.requests.with_label_values(&[route, class]).inc();
    res
}

async fn dispatch(coord: &Arc<Coordinator>, req: Request) -> (&'static str, Response) {
    let method = req.method().clone();
    match req.uri().path() {
        "/" if method == Method::GET => {
            ("dashboard", presence_http::with_type(StatusCode::OK, crate::dashboard::PAGE, "text/html; charset=utf-8"))
        }
        "/dashboard/stream" if method == Method::GET => ("dashboard", crate::dashboard::stream(coord.clone())),
        "/route" => ("route", timed(coord, route(coord, req, &method).await)),
        "/presence" => ("presence", presence(coord, req, &method).await),
        "/nodes" if method == Method::GET => ("nodes", nodes(coord)),
        "/ring" if method == Method::GET => ("ring", ring(coord)),
        "/healthz" if method == Method::GET => ("healthz", json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        "/readyz" if method == Method::GET => ("readyz", readyz(coord)),
        "/metrics" if method == Method::GET => ("metrics", metrics_response(&coord.metrics.registry)),
        "/" | "/dashboard/stream" | "/nodes" | "/ring" | "/healthz" | "/readyz" | "/metrics" => {
            ("other", presence_http::method_not_allowed())
        }
        _ => ("other", not_found()),
    }
}

fn timed(coord: &Coordinator, (started, res): (Instant, Response)) -> Response {
    coord.metrics.route_seconds.observe(started.elapsed().as_secs_f64());
    res
}

fn bad_request(code: &str, message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, code, message)
}

/// The `userId` query parameter, validated. The error is the ready 400
/// response; its size only matters on this cold path.
#[allow(clippy::result_large_err)]
fn user_param(req: &Request) -> Result<UserId, Response> {
    let raw = query_param(req.uri().query(), "userId")
        .ok_or_else(|| bad_request(code::INVALID_USER_ID, "missing query parameter userId"))?;
    UserId::parse(&raw).map_err(|e| bad_request(code::INVALID_USER_ID, &e.to_string()))
}

/// A JSON batch body, validated and bounded.
#[allow(clippy::result_large_err)]
async fn batch_body(req: Request) -> Result<Vec<UserId>, Response> {
    let body = read_body(req, MAX_BODY).await?;
    let batch: Batch = serde_json::from_slice(&body).map_err(|e| {
        let msg = e.to_string();
        let code = if msg.starts_with("user ID") { code::INVALID_USER_ID } else { code::BAD_REQUEST };
        bad_request(code, &format!("expected {{\"userIds\": [...]}}: {msg}"))
    })?;
    if batch.user_ids.len() > MAX_BATCH {
        return Err(bad_request(
            "batch_too_large",
            &format!("at most {MAX_BATCH} user IDs per request, got {}", batch.user_ids.len()),
        ));
    }
    Ok(batch.user_ids)
}

fn route_of(table: &RoutingTable, user: &UserId, stale: bool) -> Route {
    let vnode = user.vnode();
    let owner = table.owner_of_vnode(vnode);
    Route {
        user_id: user.to_string(),
        vnode,
        node_id: owner.map(|n| n.id.clone()),
        url: owner.map(|n| n.url.clone()),
        epoch: table.epoch,
        stale,
    }
}

async fn route(coord: &Coordinator, req: Request, method: &Method) -> (Instant, Response) {
    let started = Instant::now();
    let users = match *method {
        Method::GET => match user_param(&req) {
            Ok(u) => vec![u],
            Err(res) => return (started, res),
        },
        Method::POST => match batch_body(req).await {
            Ok(us) => us,
            Err(res) => return (started, res),
        },
        _ => return (started, presence_http::method_not_allowed()),
    };
    let Some(table) = coord.table.get() else {
        return (
            started,
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                code::UNAVAILABLE,
                "no routing table yet: no ws-node has registered",
            ),
        );
    };
    let stale = coord.table.is_stale();
    if *method == Method::GET {
        let r = route_of(&table, &users[0], stale);
        if r.node_id.is_none() {
            return (
                started,
                error(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, "no live node owns this user's vnode"),
            );
        }
        return (started, json(StatusCode::OK, &r));
    }
    let routes: Vec<Route> = users.iter().map(|u| route_of(&table, u, stale)).collect();
    (started, json(StatusCode::OK, &serde_json::json!({ "routes": routes })))
}

async fn presence(coord: &Coordinator, req: Request, method: &Method) -> Response {
    let (users, single) = match *method {
        Method::GET => match user_param(&req) {
            Ok(u) => (vec![u], true),
            Err(res) => return res,
        },
        Method::POST => match batch_body(req).await {
            Ok(us) => (us, false),
            Err(res) => return res,
        },
        _ => return presence_http::method_not_allowed(),
    };
    match coord.store.presence(&users).await {
        Ok(states) => {
            let now = presence_model::time::now_ms();
            let views: Vec<PresenceView> = states.iter().map(|p| PresenceView::of(p, now)).collect();
            if single {
                json(StatusCode::OK, &views[0])
            } else {
                json(StatusCode::OK, &serde_json::json!({ "users": views }))
            }
        }
        Err(e) => {
            coord.metrics.store_errors.inc();
            tracing::warn!(error = %e, "presence read failed");
            error(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, "presence store is unreachable; retry shortly")
        }
    }
}

/// Live nodes with the vnodes each owns in the current table.
pub fn node_views(coord: &Coordinator) -> Vec<NodeView> {
    let table = coord.table.get();
    let counts: std::collections::HashMap<&str, usize> =
        table.as_ref().map(|t| t.nodes.iter().map(|n| n.id.as_str()).zip(t.counts()).collect()).unwrap_or_default();
    let now = presence_model::time::now_ms();
    coord
        .nodes()
        .iter()
        .map(|n| NodeView {
            id: n.id.clone(),
            url: n.url.clone(),
            capacity: n.capacity,
            connections: n.connections,
            users: n.users,
            vnodes: counts.get(n.id.as_str()).copied().unwrap_or(0),
            pinned: n.pinned.len(),
            draining: n.draining,
            last_heartbeat: n.heartbeat_ms,
            heartbeat_age_ms: now.saturating_sub(n.heartbeat_ms),
        })
        .collect()
}

fn nodes(coord: &Coordinator) -> Response {
    json(StatusCode::OK, &serde_json::json!({ "nodes": node_views(coord) }))
}

fn ring(coord: &Coordinator) -> Response {
    let Some(t) = coord.table.get() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, "no routing table yet");
    };
    let counts = t.counts();
    let nodes: Vec<serde_json::Value> = t
        .nodes
        .iter()
        .zip(&counts)
        .map(|(n, c)| serde_json::json!({ "id": n.id, "url": n.url, "vnodes": c }))
        .collect();
    // Owners as indices into `nodes` (null where unowned): 4096 small numbers instead of 4096 strings.
    let owners: Vec<Option<u16>> =
        t.owners.iter().map(|&i| if (i as usize) < t.nodes.len() { Some(i) } else { None }).collect();
    json(
        StatusCode::OK,
        &serde_json::json!({ "epoch": t.epoch, "stale": coord.table.is_stale(), "nodes": nodes, "owners": owners }),
    )
}

fn readyz(coord: &Coordinator) -> Response {
    let reason = if coord.table.get().is_none() {
        Some("no routing table yet")
    } else if !coord.store_ok() {
        Some("store unreachable")
    } else {
        None
    };
    let body = serde_json::json!({
        "ready": reason.is_none(),
        "reason": reason,
        "coordinatorId": coord.config.id,
        "leader": coord.is_leader(),
        "epoch": coord.table.epoch(),
        "tableStale": coord.table.is_stale(),
        "store": coord.store.kind(),
        "storeReachable": coord.store_ok(),
    });
    json(if reason.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}
