//! The WebSocket protocol between clients and ws-nodes (`docs/protocol.md`):
//! JSON text frames tagged by `type`, camelCase fields, the close codes, and
//! every error code either server (or the SDK) puts in an `error` message or
//! an HTTP JSON error. No other crate spells a code or a close number.

use serde::{Deserialize, Serialize};

use crate::api::PresenceView;
use crate::rich::{Availability, Device, LastSeenPolicy, UserStatus, MAX_STATUS_TTL_MS};
use crate::{Presence, UserId};

/// Close codes the node uses, and what each means to a client.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The node is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The node cannot serve right now (no routing table yet); retry later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Authentication failed (bad or expired token).
    pub const UNAUTHORIZED: u16 = 4001;
    /// No `auth` message arrived in time.
    pub const AUTH_TIMEOUT: u16 = 4008;
    /// Too many subscriptions, a frame too large, or an outbound queue overflow.
    pub const LIMIT: u16 = 4009;
    /// This node does not own the user's vnode (after a `redirect`).
    pub const WRONG_NODE: u16 = 4010;
    /// The user's vnode moved or the node drains (after a `reconnect`).
    pub const HANDOFF: u16 = 4011;
    /// Too many connections for the user, or messages sent too fast.
    pub const RATE_LIMITED: u16 = 4029;
}

/// Error codes carried by `error` messages and HTTP JSON errors.
pub mod code {
    /// Authentication failed.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The token has expired: refresh it and reconnect.
    pub const TOKEN_EXPIRED: &str = "token_expired";
    /// The frame is not valid JSON, or not a JSON object with a `type`.
    pub const MALFORMED: &str = "malformed_message";
    /// The `type` is not one the server knows.
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    /// A field is missing or has the wrong shape.
    pub const BAD_REQUEST: &str = "bad_request";
    /// A user ID is invalid.
    pub const INVALID_USER_ID: &str = "invalid_user_id";
    /// The subscribe policy does not let this user watch that one.
    pub const FORBIDDEN: &str = "forbidden";
    /// The connection would exceed its subscription limit.
    pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
    /// A frame exceeded the size limit.
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    /// Binary frames are not part of the protocol.
    pub const BINARY_NOT_SUPPORTED: &str = "binary_not_supported";
    /// No live node owns the vnode, or the node has no routing table yet.
    pub const UNAVAILABLE: &str = "unavailable";
    /// The client read too slowly and its outbound queue overflowed.
    pub const SLOW_CONSUMER: &str = "slow_consumer";
    /// The HTTP route does not exist.
    pub const NOT_FOUND: &str = "not_found";
    /// The HTTP method is not allowed on this route.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// Something failed inside the server; details are in its log.
    pub const INTERNAL: &str = "internal";
    /// `GET /socket` without a WebSocket upgrade.
    pub const UPGRADE_REQUIRED: &str = "upgrade_required";
    /// A batch request names more user IDs than allowed.
    pub const BATCH_TOO_LARGE: &str = "batch_too_large";
    /// An HTTP request body exceeds its limit.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// The user holds as many connections as a user may, cluster-wide.
    pub const TOO_MANY_USER_CONNECTIONS: &str = "too_many_user_connections";
    /// The connection sends messages faster than allowed; this one was dropped.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The listener holds as many connections as it allows (overall or from one IP).
    pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
    /// Too many connections wait for their `auth` message.
    pub const TOO_MANY_PENDING: &str = "too_many_unauthenticated";
    /// An HTTP request body did not arrive in time.
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
    /// The SDK stopped retrying (its attempt limit was reached). Never sent by a server.
    pub const GAVE_UP: &str = "gave_up";
    /// An HTTP error whose body was not a JSON error. Never sent by a server.
    pub const UNKNOWN: &str = "unknown";
}

/// Why a `reconnect` was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffReason {
    /// The coordinator moved the user's vnode to another node.
    Rebalance,
    /// The node is leaving on purpose (SIGTERM).
    Drain,
    /// The node lost its registration (cut off from the store, or paused,
    /// for longer than its TTL) and may have been counted out: `url` is
    /// empty; ask the coordinator where the user lives now.
    Fenced,
    /// A reason this version does not know (sent by a newer server).
    #[serde(other)]
    Other,
}

impl HandoffReason {
    /// The wire name (`rebalance`, `drain`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rebalance => "rebalance",
            Self::Drain => "drain",
            Self::Fenced => "fenced",
            Self::Other => "other",
        }
    }
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    /// Sent once after authentication, on the owning node.
    #[serde(rename_all = "camelCase")]
    Welcome {
        /// The authenticated user.
        user_id: UserId,
        /// This connection's ID.
        connection_id: String,
        /// The node serving it.
        node_id: String,
        /// The routing epoch the node holds.
        epoch: u64,
        /// The user's live connections in the cluster, this one included.
        connections: u64,
        /// When the connection's token runs out (`exp` plus leeway, ms since
        /// the Unix epoch): send a fresh `auth` before, or the connection is
        /// closed with 4001 `token_expired`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_expires_at: Option<u64>,
    },
    /// The user's own connection count changed.
    #[serde(rename_all = "camelCase")]
    Count {
        /// The user.
        user_id: UserId,
        /// Live connections in the cluster.
        connections: u64,
    },
    /// A subscribed user's status: once on subscribe, then on every change
    /// (the fields of [`PresenceView`], as `/presence` has them).
    Status(PresenceView),
    /// Several `status` messages at once: what a connection's outbox held when
    /// its client was behind (each user at most once, newest state).
    #[serde(rename_all = "camelCase")]
    Statuses {
        /// The `status` messages, in the order they were queued.
        statuses: Vec<ServerMessage>,
    },
    /// This node does not own the user: connect to `url`; close 4010 follows.
    #[serde(rename_all = "camelCase")]
    Redirect {
        /// The owning node's WebSocket URL.
        url: String,
        /// The routing epoch the answer comes from.
        epoch: u64,
    },
    /// The user's vnode moves or the node drains: connect to `url`, then close this one.
    #[serde(rename_all = "camelCase")]
    Reconnect {
        /// The new owner's WebSocket URL; empty when the node cannot tell
        /// (reason `fenced`): ask the coordinator.
        url: String,
        /// The routing epoch of the move.
        epoch: u64,
        /// Why the user moves.
        reason: HandoffReason,
    },
    /// Answer to `ping`.
    Pong,
    /// Bad input or a refusal; fatal ones are followed by a close.
    #[serde(rename_all = "camelCase")]
    Error {
        /// Machine-readable code (see [`code`]).
        code: String,
        /// Human-readable explanation.
        message: String,
    },
}

impl ServerMessage {
    /// An `error` message.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::Error { code: code.to_string(), message: message.into() }
    }

    /// The `status` message for `p` as seen at `now_ms` (the same view as `/presence`).
    pub fn status(p: &Presence, now_ms: u64) -> Self {
        Self::Status(PresenceView::of(p, now_ms))
    }

    /// The `status` of `p` as a watcher other than the user sees it
    /// ([`PresenceView::public`]).
    pub fn public_status(p: &Presence, now_ms: u64, policy: LastSeenPolicy) -> Self {
        Self::Status(PresenceView::public(p, now_ms, policy))
    }

    /// Serialises to the JSON text of a frame.
    pub fn to_json(&self) -> String {
        // Serialising these plain enums cannot fail: no maps with non-string keys, no foreign types.
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","code":"internal","message":"serialisation failed"}"#.to_string())
    }
}

/// A message from a client to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClientMessage {
    /// Authenticate with a JWT; on an authenticated connection, a fresh token
    /// for the same user that extends the connection's life.
    Auth {
        /// The JWT.
        token: String,
        /// The connection's device class (a token's `device` claim wins).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<Device>,
    },
    /// Start receiving `status` for these users.
    #[serde(rename_all = "camelCase")]
    Subscribe {
        /// Users to watch.
        user_ids: Vec<UserId>,
    },
    /// Stop receiving `status` for these users.
    #[serde(rename_all = "camelCase")]
    Unsubscribe {
        /// Users to stop watching.
        user_ids: Vec<UserId>,
    },
    /// Liveness check; answered with `pong`.
    Ping,
    /// Sets the user's availability and text (user-level: every connection
    /// of the user and every watcher sees it), lapsing after `expiresInMs`.
    #[serde(rename_all = "camelCase")]
    SetStatus {
        /// `available`, `away`, `busy` or `invisible`.
        availability: Availability,
        /// A short text, at most 128 characters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// How long it holds, ms (at most a week); forever when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_in_ms: Option<u64>,
    },
    /// This connection's activity: idle (no user input for a while) or active.
    Activity {
        /// `true` when idle.
        idle: bool,
    },
}

impl ClientMessage {
    /// Serialises to the JSON text of a frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a client frame was refused; each maps to an `error` code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, or not an object with a string `type`.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A `type` the server does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A user ID in the message is invalid.
    #[error("invalid user ID: {0}")]
    InvalidUserId(String),
    /// Fields missing or of the wrong shape.
    #[error("bad {kind} message: {detail}")]
    BadRequest {
        /// The message type.
        kind: String,
        /// What is wrong.
        detail: String,
    },
}

impl ParseError {
    /// The `error` code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => code::MALFORMED,
            Self::UnknownType(_) => code::UNKNOWN_TYPE,
            Self::InvalidUserId(_) => code::INVALID_USER_ID,
            Self::BadRequest { .. } => code::BAD_REQUEST,
        }
    }
}

const KNOWN_TYPES: [&str; 6] = ["auth", "subscribe", "unsubscribe", "ping", "setStatus", "activity"];

/// A client message as sent, before its user IDs are checked: the shape is
/// serde's job, the IDs are [`crate::user_id::parse_list`]'s, so the two kinds
/// of mistake get their own codes without reading serde's error text.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum RawClientMessage {
    Auth {
        token: String,
        #[serde(default)]
        device: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    Subscribe {
        user_ids: Vec<String>,
    },
    #[serde(rename_all = "camelCase")]
    Unsubscribe {
        user_ids: Vec<String>,
    },
    Ping,
    #[serde(rename_all = "camelCase")]
    SetStatus {
        availability: String,
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        expires_in_ms: Option<u64>,
    },
    Activity {
        idle: bool,
    },
}

/// Parses a client text frame, telling malformed JSON, unknown types, invalid
/// user IDs and bad fields apart so that each gets its own error code.
pub fn parse_client(text: &str) -> Result<ClientMessage, ParseError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ParseError::Malformed(e.to_string()))?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| ParseError::Malformed("expected a JSON object with a string \"type\"".into()))?
        .to_string();
    if !KNOWN_TYPES.contains(&kind.as_str()) {
        return Err(ParseError::UnknownType(kind));
    }
    let raw: RawClientMessage = serde_json::from_value(value)
        .map_err(|e| ParseError::BadRequest { kind: kind.clone(), detail: e.to_string() })?;
    let ids = |raw: Vec<String>| crate::user_id::parse_list(&raw).map_err(|e| ParseError::InvalidUserId(e.to_string()));
    let bad = |detail: String| ParseError::BadRequest { kind: kind.clone(), detail };
    Ok(match raw {
        RawClientMessage::Auth { token, device } => {
            ClientMessage::Auth { token, device: device.as_deref().map(Device::parse).transpose().map_err(bad)? }
        }
        RawClientMessage::SetStatus { availability, text, expires_in_ms } => {
            let availability = Availability::parse(&availability)
                .ok_or_else(|| bad("availability is available, away, busy or invisible".into()))?;
            if let Some(t) = &text {
                UserStatus::check_text(t).map_err(bad)?;
            }
            if expires_in_ms.is_some_and(|ms| ms == 0 || ms > MAX_STATUS_TTL_MS) {
                return Err(bad(format!("expiresInMs is from 1 to {MAX_STATUS_TTL_MS}")));
            }
            ClientMessage::SetStatus { availability, text: text.filter(|t| !t.is_empty()), expires_in_ms }
        }
        RawClientMessage::Activity { idle } => ClientMessage::Activity { idle },
        RawClientMessage::Subscribe { user_ids } => ClientMessage::Subscribe { user_ids: ids(user_ids)? },
        RawClientMessage::Unsubscribe { user_ids } => ClientMessage::Unsubscribe { user_ids: ids(user_ids)? },
        RawClientMessage::Ping => ClientMessage::Ping,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_have_the_documented_shape() {
        let m = ServerMessage::Welcome {
            user_id: UserId::parse("alice").expect("valid"),
            connection_id: "c1".into(),
            node_id: "n1".into(),
            epoch: 7,
            connections: 2,
            token_expires_at: None,
        };
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"welcome","userId":"alice","connectionId":"c1","nodeId":"n1","epoch":7,"connections":2})
        );
        let s = ServerMessage::status(&Presence::unknown(UserId::parse("bob").expect("valid")), 1);
        assert_eq!(
            s.to_json(),
            r#"{"type":"status","userId":"bob","online":false,"connections":0,"lastSeen":null,"availability":"available"}"#
        );
        let gone = Presence {
            last_seen: Some(7),
            reason: Some(crate::EventReason::Timeout),
            ..Presence::counted(UserId::parse("bob").expect("valid"), 0, 3)
        };
        assert_eq!(
            ServerMessage::status(&gone, 9).to_json(),
            r#"{"type":"status","userId":"bob","online":false,"connections":0,"lastSeen":7,"reason":"timeout","availability":"available"}"#
        );
        assert_eq!(ServerMessage::Pong.to_json(), r#"{"type":"pong"}"#);
        let r = ServerMessage::Reconnect { url: "ws://n".into(), epoch: 1, reason: HandoffReason::Drain };
        assert_eq!(r.to_json(), r#"{"type":"reconnect","url":"ws://n","epoch":1,"reason":"drain"}"#);
        let newer: ServerMessage =
            serde_json::from_str(r#"{"type":"reconnect","url":"ws://n","epoch":1,"reason":"moon_phase"}"#)
                .expect("an unknown reason still parses");
        assert!(matches!(newer, ServerMessage::Reconnect { reason: HandoffReason::Other, .. }));
        let back: ServerMessage = serde_json::from_str(&m.to_json()).expect("round trip");
        assert_eq!(back, m);
    }

    #[test]
    fn rich_statuses_and_what_watchers_see_of_them() {
        use crate::rich::{Availability, Device, UserStatus};
        let mut p = Presence { idle_since: Some(500), ..Presence::counted(UserId::parse("ann").expect("valid"), 3, 9) };
        p.devices = crate::Devices::default();
        p.devices.add(&Device::parse("web").expect("valid"), 1);
        p.devices.add(&Device::parse("mobile").expect("valid"), 2);
        p.status = Some(Box::new(UserStatus {
            availability: Availability::Busy,
            text: Some("In a meeting".into()),
            expires_at: Some(2_000),
            invisible_since: None,
        }));
        assert_eq!(
            ServerMessage::status(&p, 1_000).to_json(),
            r#"{"type":"status","userId":"ann","online":true,"connections":3,"lastSeen":1000,"devices":{"mobile":2,"web":1},"idle":true,"idleSince":500,"availability":"busy","statusText":"In a meeting","statusExpiresAt":2000}"#
        );
        // Expired: back to available, no text.
        let later = ServerMessage::status(&p, 2_000).to_json();
        assert!(later.contains(r#""availability":"available""#) && !later.contains("statusText"), "{later}");
        // Invisible: the user sees the truth, everyone else an offline user.
        p.status = Some(Box::new(UserStatus {
            availability: Availability::Invisible,
            invisible_since: Some(700),
            ..Default::default()
        }));
        assert!(ServerMessage::status(&p, 1_000).to_json().contains(r#""online":true"#));
        assert_eq!(
            ServerMessage::public_status(&p, 1_000, LastSeenPolicy::Exact).to_json(),
            r#"{"type":"status","userId":"ann","online":false,"connections":0,"lastSeen":700,"reason":"closed","availability":"available"}"#
        );
        assert!(ServerMessage::public_status(&p, 1_000, LastSeenPolicy::Hidden)
            .to_json()
            .contains(r#""lastSeen":null"#));
    }

    #[test]
    fn rich_client_messages_are_checked() {
        let ok = parse_client(r#"{"type":"setStatus","availability":"busy","text":"Lunch","expiresInMs":3600000}"#);
        assert_eq!(
            ok,
            Ok(ClientMessage::SetStatus {
                availability: Availability::Busy,
                text: Some("Lunch".into()),
                expires_in_ms: Some(3_600_000)
            })
        );
        for bad in [
            r#"{"type":"setStatus","availability":"napping"}"#,
            r#"{"type":"setStatus","availability":"away","expiresInMs":0}"#,
            r#"{"type":"setStatus","availability":"away","expiresInMs":999999999999}"#,
            r#"{"type":"activity"}"#,
            r#"{"type":"auth","token":"t","device":"Web Browser"}"#,
        ] {
            assert_eq!(parse_client(bad).map_err(|e| e.code()), Err(code::BAD_REQUEST), "{bad}");
        }
        let long = format!(r#"{{"type":"setStatus","availability":"away","text":"{}"}}"#, "x".repeat(129));
        assert_eq!(parse_client(&long).map_err(|e| e.code()), Err(code::BAD_REQUEST));
        assert_eq!(parse_client(r#"{"type":"activity","idle":true}"#), Ok(ClientMessage::Activity { idle: true }));
        let auth = parse_client(r#"{"type":"auth","token":"t","device":"Mobile"}"#);
        assert_eq!(
            auth,
            Ok(ClientMessage::Auth { token: "t".into(), device: Some(Device::parse("mobile").expect("ok")) })
        );
    }

    #[test]
    fn client_parse_errors_are_told_apart() {
        assert_eq!(parse_client(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
        assert!(matches!(
            parse_client(r#"{"type":"subscribe","userIds":["a","b"]}"#),
            Ok(ClientMessage::Subscribe { user_ids }) if user_ids.len() == 2
        ));
        assert_eq!(parse_client("{nope").map_err(|e| e.code()), Err(code::MALFORMED));
        assert_eq!(parse_client("[1,2]").map_err(|e| e.code()), Err(code::MALFORMED));
        assert_eq!(parse_client(r#"{"type":"dance"}"#).map_err(|e| e.code()), Err(code::UNKNOWN_TYPE));
        assert_eq!(
            parse_client(r#"{"type":"subscribe","userIds":[""]}"#).map_err(|e| e.code()),
            Err(code::INVALID_USER_ID)
        );
        let long = format!(r#"{{"type":"unsubscribe","userIds":["ok","{}"]}}"#, "x".repeat(200));
        let e = parse_client(&long).expect_err("too long");
        assert_eq!(e.code(), code::INVALID_USER_ID);
        assert!(e.to_string().contains("user ID 1"), "{e}");
        assert_eq!(parse_client(r#"{"type":"subscribe","userIds":[5]}"#).map_err(|e| e.code()), Err(code::BAD_REQUEST));
        assert_eq!(parse_client(r#"{"type":"subscribe"}"#).map_err(|e| e.code()), Err(code::BAD_REQUEST));
        assert_eq!(parse_client(r#"{"type":"auth","token":5}"#).map_err(|e| e.code()), Err(code::BAD_REQUEST));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,300}") {
            let _ = parse_client(&s);
        }

        #[test]
        fn parser_never_panics_on_typed_objects(kind in "[a-z]{0,12}", ids in proptest::collection::vec("\\PC{0,140}", 0..5)) {
            let frame = serde_json::json!({"type": kind, "userIds": ids, "token": "x"}).to_string();
            let _ = parse_client(&frame);
        }
    }
}
