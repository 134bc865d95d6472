//! The demo's try-it page (`/try`): open it in a few browser tabs as
//! different users and watch each other come and go. It runs the JavaScript
//! SDK (`client-sdk/js`) as a browser would load it, against the demo's
//! coordinator.
//!
//! Its server is part of the demo only, never of a deployed cluster: it hands
//! out development tokens to anyone who asks (`/token`), signed with the
//! demo's secret, and keeps the names it gave tokens to (`/users`, the last
//! [`MAX_USERS`]) so that each page can watch the others.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use presence_http::{json, query_param, with_type, Request, Response};

/// The page.
const PAGE: &str = include_str!("try.html");
/// The SDK as built from `client-sdk/js/src` (`npm run build`; `scripts/test`
/// checks that the built file matches its source).
const SDK: &str = include_str!("../client-sdk/js/dist/index.js");
/// Users the page lists at most (the most recent).
pub const MAX_USERS: usize = 50;
/// Lifetime of the tokens `/token` mints, seconds, unless `?ttl=` asks for
/// a shorter one (down to 2 s, to see the SDK refresh them).
const TOKEN_TTL_SECS: u64 = 3600;

/// What the page's server knows.
pub struct TryPage {
    secret: String,
    coordinator: String,
    users: Mutex<VecDeque<String>>,
}

impl TryPage {
    /// The page of a demo whose coordinator's public URL is `coordinator`, minting with `secret`.
    pub fn new(secret: &str, coordinator: &str) -> Arc<Self> {
        Arc::new(Self { secret: secret.into(), coordinator: coordinator.into(), users: Mutex::default() })
    }

    /// Answers one request.
    pub fn handle(&self, req: &Request) -> Response {
        let query = req.uri().query();
        match req.uri().path() {
            "/" | "/try" => with_type(
                StatusCode::OK,
                PAGE.replace("{{COORDINATOR}}", &self.coordinator),
                "text/html; charset=utf-8",
            ),
            "/presence-client.js" => with_type(StatusCode::OK, SDK, "text/javascript; charset=utf-8"),
            "/token" => {
                let user = query_param(query, "userId").ok().flatten().unwrap_or_default();
                if let Err(e) = presence_model::UserId::parse(&user) {
                    return presence_http::error(StatusCode::BAD_REQUEST, "invalid_user_id", &e.to_string());
                }
                let ttl = query_param(query, "ttl").ok().flatten().and_then(|t| t.parse().ok());
                let ttl = ttl.unwrap_or(TOKEN_TTL_SECS).clamp(2, TOKEN_TTL_SECS);
                self.remember(&user);
                let token = presence_model::auth::mint_hs256(self.secret.as_bytes(), &user, ttl);
                json(StatusCode::OK, &serde_json::json!({ "token": token }))
            }
            "/users" => {
                let users: Vec<String> = self.users.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
                json(StatusCode::OK, &serde_json::json!({ "users": users }))
            }
            _ => presence_http::not_found(),
        }
    }

    /// Serves the page on `listener` until `stop`.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener, stop: tokio_util::sync::CancellationToken) {
        let gate = presence_http::Gate::new(
            presence_http::Limits::default(),
            presence_http::HttpMetrics::new(&prometheus::Registry::new(), "try"),
        );
        let handler = move |req: Request| {
            let page = self.clone();
            async move { page.handle(&req) }
        };
        presence_http::serve(listener, handler, stop, gate).await
    }

    fn remember(&self, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.retain(|u| u != user);
        users.push_back(user.to_string());
        while users.len() > MAX_USERS {
            users.pop_front();
        }
    }
}
