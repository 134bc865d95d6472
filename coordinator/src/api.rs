//! The coordinator's HTTP API (`docs/protocol.md`, "Coordinator HTTP API").
//! JSON in camelCase; errors as `{"error","code"}`. `/route` reads only the
//! cached table.
//!
//! [`handle`] is generic over the request body, so tests call it with a
//! `Full<Bytes>` request and no socket. Handlers return
//! `Result<Response, ApiError>`; [`ApiError`] is the one place that maps a
//! failure to its status and code.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};
use presence_http::{json, metrics_response, query_param, read_body, BodyError, NotUtf8, Response};
use presence_model::api::PresenceView;
use presence_model::user_id::{parse_list, ListError};
use presence_model::wire::code;
use presence_model::{LastSeenPolicy, RoutingTable, UserId, UserIdError};
use serde::Deserialize;

use crate::{views, Coordinator, Listener};

/// Most user IDs in one batch request.
pub const MAX_BATCH: usize = 1000;
/// Largest request body accepted (a full batch of 128-byte IDs fits).
const MAX_BODY: usize = 256 * 1024;

/// A batch body as sent; the IDs are checked by [`parse_list`], not by serde,
/// so an invalid ID and a malformed body get different codes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Batch {
    user_ids: Vec<String>,
}

/// Why a request failed. Each variant has one status and one code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `userId` query parameter.
    #[error("missing query parameter userId")]
    MissingUserId,
    /// The `userId` query parameter is not a valid user ID.
    #[error("{0}")]
    InvalidUserId(#[from] UserIdError),
    /// A query parameter is not UTF-8 (user IDs are).
    #[error("{0}")]
    NotUtf8(#[from] NotUtf8),
    /// A batch names an invalid user ID.
    #[error("{0}")]
    InvalidUserIdInList(#[from] ListError),
    /// The body is not the expected JSON.
    #[error("expected {{\"userIds\": [...]}}: {0}")]
    BadBody(String),
    /// The body could not be read or is too long.
    #[error("{0}")]
    Body(#[from] BodyError),
    /// A batch over [`MAX_BATCH`].
    #[error("at most {MAX_BATCH} user IDs per request, got {0}")]
    BatchTooLarge(usize),
    /// No table has been written yet.
    #[error("no routing table yet: no ws-node has registered")]
    NoTable,
    /// The user's vnode has no live owner.
    #[error("no live node owns this user's vnode")]
    NoOwner,
    /// The store did not answer a presence read.
    #[error("presence store is unreachable; retry shortly")]
    StoreDown,
    /// No such path.
    #[error("no such route")]
    NotFound,
    /// The path exists, the method does not.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// An admin route without the API key.
    #[error("this route needs the admin API key (Authorization: Bearer <key>)")]
    Unauthorized,
}

impl ApiError {
    /// The HTTP status and error code of this failure.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MissingUserId | Self::InvalidUserId(_) | Self::InvalidUserIdInList(_) | Self::NotUtf8(_) => {
                (StatusCode::BAD_REQUEST, code::INVALID_USER_ID)
            }
            Self::BadBody(_) | Self::Body(BodyError::Unreadable) => (StatusCode::BAD_REQUEST, code::BAD_REQUEST),
            Self::Body(BodyError::TooLarge(_)) => (StatusCode::PAYLOAD_TOO_LARGE, code::PAYLOAD_TOO_LARGE),
            Self::Body(BodyError::Timeout) => (StatusCode::REQUEST_TIMEOUT, code::REQUEST_TIMEOUT),
            Self::BatchTooLarge(_) => (StatusCode::BAD_REQUEST, code::BATCH_TOO_LARGE),
            Self::NoTable | Self::NoOwner | Self::StoreDown => (StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE),
            Self::NotFound => (StatusCode::NOT_FOUND, code::NOT_FOUND),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, code::METHOD_NOT_ALLOWED),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, code::UNAUTHORIZED),
        }
    }

    /// The JSON error response.
    pub fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut res = presence_http::error(status, code, &self.to_string());
        if matches!(self, Self::Unauthorized) {
            // Browsers ask for the key (as the password) and send it on with the dashboard's stream.
            let challenge = http::HeaderValue::from_static("Basic realm=\"presence admin\", charset=\"UTF-8\"");
            res.headers_mut().insert(http::header::WWW_AUTHENTICATE, challenge);
        }
        res
    }
}

type ApiResult = Result<Response, ApiError>;

/// Who may call a path on a listener ([`crate::admin`]).
#[derive(Debug, PartialEq, Eq)]
enum Access {
    /// Anyone.
    Open,
    /// Whoever carries the admin key.
    Keyed,
    /// Not served here: answered 404, as if it did not exist.
    Hidden,
}

fn access(listener: Listener, keyed: bool, path: &str) -> Access {
    let private = matches!(path, "/" | "/dashboard/stream" | "/nodes" | "/ring" | "/metrics" | "/presence" | "/stats");
    match listener {
        _ if matches!(path, "/route" | "/healthz" | "/readyz") => Access::Open,
        Listener::Public if path == "/presence" && keyed => Access::Keyed,
        Listener::Public if private => Access::Hidden,
        Listener::Admin if private && keyed => Access::Keyed,
        _ => Access::Open,
    }
}

/// Routes one request that arrived on `listener`, counting it by route and status class.
pub async fn handle<B>(coord: Arc<Coordinator>, listener: Listener, req: http::Request<B>) -> Response
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let key = coord.config.admin_key.as_ref();
    // `/route` may be asked by pages of any origin (the JavaScript SDK in a
    // browser): it answers the same to everyone and uses no credentials.
    let cross_origin = req.uri().path() == "/route";
    if cross_origin && req.method() == Method::OPTIONS {
        let res = preflight();
        coord.metrics.request("route", res.status().as_u16());
        return res;
    }
    let (route, result) = match access(listener, key.is_some(), req.uri().path()) {
        Access::Hidden => ("other", Err(ApiError::NotFound)),
        Access::Keyed if !key.is_some_and(|k| k.admits(req.headers())) => {
            coord.metrics.unauthorized.inc();
            ("unauthorized", Err(ApiError::Unauthorized))
        }
        Access::Open | Access::Keyed => dispatch(&coord, req).await,
    };
    let mut res = result.unwrap_or_else(ApiError::into_response);
    if cross_origin {
        res.headers_mut().insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, http::HeaderValue::from_static("*"));
    }
    coord.metrics.request(route, res.status().as_u16());
    res
}

/// The answer to a CORS preflight of `/route` (a `POST` with a JSON body needs one).
fn preflight() -> Response {
    let mut res = Response::new(presence_http::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, http::HeaderValue::from_static("*"));
    h.insert(http::header::ACCESS_CONTROL_ALLOW_METHODS, http::HeaderValue::from_static("GET, POST"));
    h.insert(http::header::ACCESS_CONTROL_ALLOW_HEADERS, http::HeaderValue::from_static("content-type"));
    h.insert(http::header::ACCESS_CONTROL_MAX_AGE, http::HeaderValue::from_static("600"));
    res
}

async fn dispatch<B>(coord: &Arc<Coordinator>, req: http::Request<B>) -> (&'static str, ApiResult)
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let get = req.method() == Method::GET;
    match req.uri().path() {
        "/" if get => ("dashboard", Ok(crate::dashboard::page())),
        "/dashboard/stream" if get => ("dashboard", Ok(crate::dashboard::stream(coord.clone()))),
        "/route" => {
            let started = Instant::now();
            let res = route(coord, req).await;
            coord.metrics.route_seconds.observe(started.elapsed().as_secs_f64());
            ("route", res)
        }
        "/presence" => ("presence", presence(coord, req).await),
        "/nodes" if get => ("nodes", Ok(json(StatusCode::OK, &serde_json::json!({ "nodes": views::nodes(coord) })))),
        "/ring" if get => ("ring", ring(coord)),
        "/stats" if get => ("stats", stats(coord).await),
        "/healthz" if get => ("healthz", Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))),
        "/readyz" if get => ("readyz", Ok(readyz(coord))),
        "/metrics" if get => ("metrics", Ok(metrics_response(&coord.metrics.registry))),
        "/" | "/dashboard/stream" | "/nodes" | "/ring" | "/stats" | "/healthz" | "/readyz" | "/metrics" => {
            ("other", Err(ApiError::MethodNotAllowed))
        }
        _ => ("other", Err(ApiError::NotFound)),
    }
}

/// The users a `/route` or `/presence` request names: `?userId=` on GET, a
/// JSON batch on POST. `true` with a single user.
async fn users_of<B>(req: http::Request<B>) -> Result<(Vec<UserId>, bool), ApiError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match *req.method() {
        Method::GET => {
            let raw = query_param(req.uri().query(), "userId")?.ok_or(ApiError::MissingUserId)?;
            Ok((vec![UserId::parse(&raw)?], true))
        }
        Method::POST => {
            let body = read_body(req.into_body(), MAX_BODY).await?;
            let batch: Batch = serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?;
            if batch.user_ids.len() > MAX_BATCH {
                return Err(ApiError::BatchTooLarge(batch.user_ids.len()));
            }
            Ok((parse_list(&batch.user_ids)?, false))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// A route as answered, borrowing from the request and the table: the
/// `/route` hot path serialises it without copying any string.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RouteAnswer<'a> {
    user_id: &'a str,
    vnode: u16,
    node_id: Option<&'a str>,
    url: Option<&'a str>,
    epoch: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stale: bool,
}

fn route_of<'a>(table: &'a RoutingTable, user: &'a UserId, stale: bool) -> RouteAnswer<'a> {
    let vnode = user.vnode();
    let owner = table.owner_of_vnode(vnode);
    RouteAnswer {
        user_id: user.as_str(),
        vnode,
        node_id: owner.map(|n| n.id.as_str()),
        url: owner.map(|n| n.url.as_str()),
        epoch: table.epoch,
        stale,
    }
}

async fn route<B>(coord: &Coordinator, req: http::Request<B>) -> ApiResult
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let unreachable = match req.method() {
        &Method::GET => query_param(req.uri().query(), "unreachable")?,
        _ => None,
    };
    let (users, single) = users_of(req).await?;
    let mut table = coord.table.get().ok_or(ApiError::NoTable)?;
    if single {
        if let Some(gone) = unreachable {
            table = after_report(coord, table, users[0].vnode(), &gone).await;
        }
        let r = route_of(&table, &users[0], coord.table.is_stale());
        if r.node_id.is_none() {
            return Err(ApiError::NoOwner);
        }
        return Ok(json(StatusCode::OK, &r));
    }
    let stale = coord.table.is_stale();
    let routes: Vec<RouteAnswer<'_>> = users.iter().map(|u| route_of(&table, u, stale)).collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "routes": routes })))
}

/// The table to answer a route from when the client reports that node
/// `gone` was unreachable (`crate::suspects`): the current one, unless
/// `gone` owns the user's vnode and its address refuses connections; then
/// the first table that gives the vnode another owner, waited for (at most
/// `ROUTE_WAIT_MS`, among at most `ROUTE_WAITERS` requests) and answered a
/// little later, so that released clients spread out.
async fn after_report(coord: &Coordinator, table: Arc<RoutingTable>, vnode: u16, gone: &str) -> Arc<RoutingTable> {
    let reports = &coord.metrics.route_reports;
    let owned_by_gone = |t: &RoutingTable| t.owner_of_vnode(vnode).is_some_and(|n| n.id == gone);
    let Some(url) = table.owner_of_vnode(vnode).filter(|n| n.id == gone).map(|n| n.url.clone()) else {
        reports.moved.inc();
        return table;
    };
    if coord.config.route_wait.is_zero() || !coord.suspects.refuses(gone, &url).await {
        reports.alive.inc();
        return table;
    }
    let Some(_slot) = coord.suspects.wait_slot() else {
        reports.full.inc();
        return table;
    };
    let mut tables = coord.table.subscribe();
    let moved = tables.wait_for(|t| t.as_deref().is_some_and(|t| !owned_by_gone(t)));
    let moved = tokio::time::timeout(coord.config.route_wait, moved).await.is_ok_and(|r| r.is_ok());
    if !moved {
        reports.timed_out.inc();
        return table;
    }
    tokio::time::sleep(coord.suspects.release_delay()).await;
    reports.released.inc();
    coord.table.get().unwrap_or(table)
}

async fn presence<B>(coord: &Coordinator, req: http::Request<B>) -> ApiResult
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (users, single) = users_of(req).await?;
    let states = coord.store.presence(&users).await.map_err(|e| {
        coord.metrics.store_errors.inc();
        tracing::warn!(error = %e, "presence read failed");
        ApiError::StoreDown
    })?;
    let now = presence_model::time::now_ms();
    // The server API sees what watchers see of an invisible user (offline),
    // with the exact `lastSeen`.
    let views: Vec<PresenceView> = states.iter().map(|p| PresenceView::public(p, now, LastSeenPolicy::Exact)).collect();
    Ok(match (single, views.as_slice()) {
        (true, [one]) => json(StatusCode::OK, one),
        _ => json(StatusCode::OK, &serde_json::json!({ "users": views })),
    })
}

/// `GET /stats`: live totals, unique users and the day's peak, read now.
async fn stats(coord: &Coordinator) -> ApiResult {
    let activity = coord.store.activity(presence_model::time::now_ms()).await.map_err(|e| {
        coord.metrics.store_errors.inc();
        tracing::warn!(error = %e, "activity read failed");
        ApiError::StoreDown
    })?;
    Ok(json(StatusCode::OK, &coord.stats(activity)))
}

fn ring(coord: &Coordinator) -> ApiResult {
    let t = coord.table.get().ok_or(ApiError::NoTable)?;
    Ok(json(StatusCode::OK, &views::ring(&t, coord.table.is_stale())))
}

fn readyz(coord: &Coordinator) -> Response {
    let reason = if coord.table.get().is_none() {
        Some("no routing table yet")
    } else if coord.control_down() {
        Some("control loop down (restarting)")
    } else if !coord.store_ok() {
        Some("store unreachable")
    } else {
        None
    };
    presence_http::readiness(
        reason,
        serde_json::json!({
            "coordinatorId": coord.config.id,
            "leaseHolder": coord.holder,
            "leader": coord.is_leader(),
            "epoch": coord.table.epoch(),
            "generation": coord.table.version().map(|v| v.generation),
            "tableStale": coord.table.is_stale(),
            "store": coord.store.kind(),
            "storeReachable": coord.store_ok(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use presence_backend::{MemoryBus, MemoryStore, Store};

    use crate::CoordinatorConfig;
    use std::time::Duration;

    fn coordinator() -> (Arc<Coordinator>, MemoryStore) {
        let store = MemoryStore::new();
        let c = Coordinator::new(CoordinatorConfig::default(), Arc::new(store.clone()), Arc::new(MemoryBus::default()));
        (c, store)
    }

    async fn call(c: &Arc<Coordinator>, method: Method, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let res = handle(c.clone(), Listener::Admin, req).await;
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// A table giving every vnode to `owner` at `url`.
    fn all_to(epoch: u64, owner: &str, url: &str) -> RoutingTable {
        let owners = vec![Some(owner); presence_model::VNODES];
        RoutingTable::from_owners(epoch, &owners, |_| url.to_string())
    }

    /// A client that lost its node names it: a node whose address refuses
    /// connections holds the answer until the vnode moves; a node that
    /// listens, or one that no longer owns the user, is answered at once.
    #[tokio::test]
    async fn a_route_that_reports_a_refusing_node_waits_for_the_move() {
        let (c, _) = coordinator();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (dead_url, live_url) =
            (format!("ws://127.0.0.1:{closed}/socket"), format!("ws://{}/socket", listening.local_addr().expect("a")));
        c.table.offer(all_to(1, "dead", &dead_url));
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { call(&c, Method::GET, "/route?userId=alice&unreachable=dead", "").await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "answered before the vnode moved");
        assert_eq!(c.suspects.waiting(), 1);
        assert!(c.suspects.any_refusing(), "the control loop now looks every 100 ms");
        c.table.offer(all_to(2, "b", &live_url));
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(2), waiting).await.expect("released").expect("ran");
        assert_eq!((status, body["nodeId"].as_str()), (StatusCode::OK, Some("b")));
        assert_eq!(c.suspects.waiting(), 0);
        // The owner listens: the client's own network failed; answered at once.
        let (_, body) = call(&c, Method::GET, "/route?userId=alice&unreachable=b", "").await;
        assert_eq!(body["nodeId"].as_str(), Some("b"));
        // The report names a node that no longer owns the user.
        let (_, body) = call(&c, Method::GET, "/route?userId=alice&unreachable=dead", "").await;
        assert_eq!(body["nodeId"].as_str(), Some("b"));
        let r = &c.metrics.route_reports;
        assert_eq!((r.released.get(), r.alive.get(), r.moved.get(), r.timed_out.get()), (1, 1, 1, 0));
    }

    /// Nothing moves: the answer comes after `ROUTE_WAIT_MS` with the same route.
    #[tokio::test]
    async fn a_reported_node_that_never_moves_is_answered_after_the_wait() {
        let store = MemoryStore::new();
        let config = CoordinatorConfig { route_wait: Duration::from_millis(200), ..Default::default() };
        let c = Coordinator::new(config, Arc::new(store), Arc::new(MemoryBus::default()));
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        c.table.offer(all_to(1, "dead", &format!("ws://127.0.0.1:{closed}/socket")));
        let started = std::time::Instant::now();
        let (status, body) = call(&c, Method::GET, "/route?userId=alice&unreachable=dead", "").await;
        assert_eq!((status, body["nodeId"].as_str()), (StatusCode::OK, Some("dead")));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(c.metrics.route_reports.timed_out.get(), 1);
    }

    #[test]
    fn what_each_listener_serves() {
        use Access::*;
        use Listener::*;
        let cases = [
            ("/route", [Open, Open, Open, Open]),
            ("/healthz", [Open, Open, Open, Open]),
            ("/readyz", [Open, Open, Open, Open]),
            ("/presence", [Hidden, Keyed, Open, Keyed]),
            ("/nodes", [Hidden, Hidden, Open, Keyed]),
            ("/ring", [Hidden, Hidden, Open, Keyed]),
            ("/metrics", [Hidden, Hidden, Open, Keyed]),
            ("/", [Hidden, Hidden, Open, Keyed]),
            ("/dashboard/stream", [Hidden, Hidden, Open, Keyed]),
            ("/nope", [Open, Open, Open, Open]), // answered 404 by the router
        ];
        for (path, want) in cases {
            let got = [(Public, false), (Public, true), (Admin, false), (Admin, true)].map(|(l, k)| access(l, k, path));
            assert_eq!(got, want, "{path}: [public, public+key, admin, admin+key]");
        }
    }

    #[tokio::test]
    async fn pages_of_any_origin_may_route_and_nothing_else() {
        let (c, _) = coordinator();
        let req = |method: Method, uri: &str| {
            http::Request::builder().method(method).uri(uri).body(Full::new(Bytes::new())).expect("request")
        };
        let origin = |res: &Response| res.headers().get(http::header::ACCESS_CONTROL_ALLOW_ORIGIN).cloned();
        let pre = handle(c.clone(), Listener::Public, req(Method::OPTIONS, "/route")).await;
        assert_eq!(pre.status(), StatusCode::NO_CONTENT);
        assert_eq!(origin(&pre).as_ref().map(|v| v.as_bytes()), Some(&b"*"[..]));
        assert!(pre.headers().get(http::header::ACCESS_CONTROL_ALLOW_HEADERS).is_some());
        // Answered (here 503: no table yet) with the header, so the page can read why.
        let get = handle(c.clone(), Listener::Public, req(Method::GET, "/route?userId=alice")).await;
        assert!(origin(&get).is_some());
        let presence = handle(c.clone(), Listener::Admin, req(Method::GET, "/presence?userId=alice")).await;
        assert!(origin(&presence).is_none(), "the server API is not for pages");
        let pre = handle(c, Listener::Admin, req(Method::OPTIONS, "/presence")).await;
        assert!(origin(&pre).is_none());
    }

    #[tokio::test]
    async fn errors_have_one_status_and_code_each() {
        let (c, _) = coordinator();
        let cases = [
            (Method::GET, "/route", "", 400, code::INVALID_USER_ID),
            (Method::GET, "/route?userId=", "", 400, code::INVALID_USER_ID),
            (Method::GET, "/presence?userId=%FF%FEab", "", 400, code::INVALID_USER_ID),
            (Method::GET, "/route?userId=alice", "", 503, code::UNAVAILABLE),
            (Method::POST, "/presence", "{", 400, code::BAD_REQUEST),
            (Method::POST, "/presence", r#"{"userIds":["ok",""]}"#, 400, code::INVALID_USER_ID),
            (Method::POST, "/route", r#"{"userIds":[1]}"#, 400, code::BAD_REQUEST),
            (Method::DELETE, "/route", "", 405, code::METHOD_NOT_ALLOWED),
            (Method::POST, "/nodes", "", 405, code::METHOD_NOT_ALLOWED),
            (Method::GET, "/nope", "", 404, code::NOT_FOUND),
        ];
        for (method, uri, body, status, code) in cases {
            let (s, v) = call(&c, method.clone(), uri, body).await;
            assert_eq!((s.as_u16(), v["code"].as_str()), (status, Some(code)), "{method} {uri} {body}: {v}");
        }
        let big = serde_json::json!({ "userIds": vec!["u"; MAX_BATCH + 1] }).to_string();
        let (s, v) = call(&c, Method::POST, "/route", &big).await;
        assert_eq!((s.as_u16(), v["code"].as_str()), (400, Some(code::BATCH_TOO_LARGE)));
        let huge = format!(r#"{{"userIds":["{}"]}}"#, "x".repeat(MAX_BODY));
        let (s, v) = call(&c, Method::POST, "/route", &huge).await;
        assert_eq!((s.as_u16(), v["code"].as_str()), (413, Some(code::PAYLOAD_TOO_LARGE)));
    }

    #[tokio::test]
    async fn presence_single_and_batch() {
        let (c, store) = coordinator();
        let alice = UserId::parse("alice").expect("valid");
        let update = presence_backend::CountUpdate::new(alice, 2);
        store.set_counts("n1", &[update], 5).await.expect("write");
        let (s, v) = call(&c, Method::GET, "/presence?userId=alice", "").await;
        assert_eq!((s, v["online"].as_bool(), v["connections"].as_u64()), (StatusCode::OK, Some(true), Some(2)));
        let (s, v) = call(&c, Method::POST, "/presence", r#"{"userIds":["alice","bob"]}"#).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["users"][1]["online"], false);
        let (_, v) = call(&c, Method::POST, "/presence", r#"{"userIds":[]}"#).await;
        assert_eq!(v["users"], serde_json::json!([]));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Any body, any query on the batch and single routes: 200, or a 4xx/5xx
        /// with a JSON error and a code; never a panic.
        #[test]
        fn any_request_gets_a_specified_answer(body in "\\PC{0,300}", query in "\\PC{0,60}") {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let (c, _) = coordinator();
                let uri = format!("/presence?{}", query.replace([' ', '#'], ""));
                for (method, uri) in [(Method::POST, "/route".to_string()), (Method::POST, "/presence".to_string()), (Method::GET, uri)] {
                    let Ok(req) = http::Request::builder().method(method).uri(&uri).body(Full::new(Bytes::from(body.clone()))) else {
                        continue;
                    };
                    let res = handle(c.clone(), Listener::Admin, req).await;
                    let status = res.status();
                    let bytes = res.into_body().collect().await.expect("body").to_bytes();
                    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON always");
                    assert!(status.is_success() || v["code"].is_string(), "{uri} -> {status} {v}");
                }
            });
        }
    }
}
