//! The coordinator's HTTP API from the client side.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use presence_model::api::{NodeView, PresenceView, Route};
use presence_model::UserId;
use serde::de::DeserializeOwned;

use crate::Error;

/// Default time allowed for one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections to the coordinator kept for reuse.
const MAX_IDLE_CONNECTIONS: usize = 16;

/// A client of one coordinator listener (`http://host:port`). Cheap to
/// clone; clones share connections.
///
/// The public listener answers [`route`](Self::route) and
/// [`routes`](Self::routes); presence, nodes and the ring are on the admin
/// listener, which asks for the API key when one is configured
/// ([`with_api_key`](Self::with_api_key)). See `docs/security.md`.
#[derive(Clone)]
pub struct CoordinatorClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    authorization: Option<http::HeaderValue>,
}

impl CoordinatorClient {
    /// A client for the coordinator at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Result<Self, Error> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(Error::InvalidUrl { url: base, reason: "expected http://host:port".into() });
        }
        Ok(Self {
            base,
            // Idle connections are kept for reuse, but few and not for long:
            // after a burst (every session of a process re-routing at once
            // when a node dies) the process must not sit on thousands of
            // idle sockets and run out of file descriptors.
            http: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
            timeout: DEFAULT_TIMEOUT,
            authorization: None,
        })
    }

    /// Sends the admin API key (`ADMIN_API_KEY`) with every request, as a bearer token.
    pub fn with_api_key(mut self, key: &str) -> Result<Self, Error> {
        let value = http::HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| Error::InvalidUrl {
            url: self.base.clone(),
            reason: "the API key is not a valid header".into(),
        })?;
        self.authorization = Some(value);
        Ok(self)
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The coordinator's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Where `user_id` should connect (`GET /route`).
    pub async fn route(&self, user_id: &str) -> Result<Route, Error> {
        let user = UserId::parse(user_id)?;
        self.get(&format!("/route?userId={}", encode(user.as_str()))).await
    }

    /// Where `user_id` should connect now that node `unreachable` could not
    /// be reached (`GET /route?unreachable=`): when that node still owns the
    /// user and its address refuses connections, the coordinator answers once
    /// the user's vnode has moved (within a few seconds), so a reconnecting
    /// client needs no guesswork about when to come back.
    pub async fn route_after_losing(&self, user_id: &str, unreachable: &str) -> Result<Route, Error> {
        let user = UserId::parse(user_id)?;
        self.get(&format!("/route?userId={}&unreachable={}", encode(user.as_str()), encode(unreachable))).await
    }

    /// Routes for up to 1000 users (`POST /route`).
    pub async fn routes(&self, user_ids: &[&str]) -> Result<Vec<Route>, Error> {
        #[derive(serde::Deserialize)]
        struct Routes {
            routes: Vec<Route>,
        }
        let body = batch(user_ids)?;
        Ok(self.post::<Routes>("/route", body).await?.routes)
    }

    /// Presence of one user (`GET /presence`).
    pub async fn presence(&self, user_id: &str) -> Result<PresenceView, Error> {
        let user = UserId::parse(user_id)?;
        self.get(&format!("/presence?userId={}", encode(user.as_str()))).await
    }

    /// Presence of up to 1000 users (`POST /presence`), in order.
    pub async fn status(&self, user_ids: &[&str]) -> Result<Vec<PresenceView>, Error> {
        #[derive(serde::Deserialize)]
        struct Users {
            users: Vec<PresenceView>,
        }
        let body = batch(user_ids)?;
        Ok(self.post::<Users>("/presence", body).await?.users)
    }

    /// Live nodes (`GET /nodes`).
    pub async fn nodes(&self) -> Result<Vec<NodeView>, Error> {
        #[derive(serde::Deserialize)]
        struct Nodes {
            nodes: Vec<NodeView>,
        }
        Ok(self.get::<Nodes>("/nodes").await?.nodes)
    }

    /// Unique users and peak connections (`GET /stats`, admin listener).
    pub async fn stats(&self) -> Result<presence_model::api::StatsView, Error> {
        self.get("/stats").await
    }

    /// The routing table (`GET /ring`) as JSON.
    pub async fn ring(&self) -> Result<serde_json::Value, Error> {
        self.get("/ring").await
    }

    /// `GET path` answered with JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.send(Method::GET, path, Bytes::new()).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> Result<T, Error> {
        self.send(Method::POST, path, Bytes::from(body)).await
    }

    async fn send<T: DeserializeOwned>(&self, method: Method, path: &str, body: Bytes) -> Result<T, Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.authorization {
            req = req.header(http::header::AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::InvalidUrl { url: self.base.clone(), reason: e.to_string() })?;
        let exchange = async {
            let res = self.http.request(req).await.map_err(|e| Error::Transport(e.to_string()))?;
            let status = res.status();
            let bytes = res.into_body().collect().await.map_err(|e| Error::Transport(e.to_string()))?.to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange).await.map_err(|_| Error::Timeout)??;
        if status != StatusCode::OK {
            return Err(Error::from_body(status.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }
}

fn batch(user_ids: &[&str]) -> Result<Vec<u8>, Error> {
    for u in user_ids {
        UserId::parse(u)?;
    }
    serde_json::to_vec(&serde_json::json!({ "userIds": user_ids })).map_err(|e| Error::Decode(e.to_string()))
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode("alice"), "alice");
        assert_eq!(encode("a b&c"), "a%20b%26c");
        assert_eq!(encode("用"), "%E7%94%A8");
    }

    #[test]
    fn rejects_bad_input_before_sending() {
        assert!(CoordinatorClient::new("ftp://x").is_err());
        assert!(matches!(batch(&["ok", ""]), Err(Error::InvalidUserId(_))));
    }
}
